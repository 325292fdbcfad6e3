"""Judge the stop rules against the measured curves of a scale run.

For every (method, target) the measured peak k is found per seed (the seeds' mean and range
are reported) and each rule's k is set beside it:

* ``theorem1``: Theorem 1's general form along each seed's order with the method's weights
  (:func:`method_weights`), Delta as configured; the seeds' mean fired k.
* ``online``: the online rule replayed over the measured curve (all seeds' points).
* ``law_k<=m``: the scaling law fitted on k <= m only, its predicted peak.
* ``pca95``: the number of principal components for 95% of the pool's variance.

Targets: ``all`` and ``union`` on the task metric, ``all/ce`` on cross-entropy (lower is better).
The online rule's and the law's tolerance is ``scale.online_tol`` times the first measured
point's gain over the base model on that target; the law's is raised to ``scale.law_noise_z``
standard errors of a paired one-step difference on k <= m when that is larger (the run's
per-example scores; :func:`evomerge.theory.online_rule.law_tolerance`).

A search whose k grid the enforced stop rule cut (``search_stop.json``) has no measured curve
beyond the cut: its "peak" is the best of the k it ran, and the online rule replayed on that
curve fires where the enforced rule did, by construction. Its rows keep the measured values
but carry ``cut_at`` and no ``error``: they are not judged (a check that cannot fail).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from evomerge.errors import EvomergeError
from evomerge.theory.general_variance import covariance_from, general_variance_curve, theorem1_rule
from evomerge.theory.online_rule import law_peak, law_tolerance, online_stop, online_tolerance, step_se
from evomerge.theory.scaling_law import fit_scaling_law

TARGETS = (("all", "fitness", "all"), ("union", "fitness", "union"), ("all/ce", "cross_entropy", "all"))
SUM_METHODS = ("task_arithmetic", "dare_linear", "magnitude_prune", "breadcrumbs")


def method_weights(method: str, params: dict[str, Any], k: int) -> np.ndarray:
    """The weights ``a`` of eq. 18 for a method merging k experts. Exact for the linear methods
    (task arithmetic: ``lambda`` each, a sum; weight averaging: ``1/k``). The sparse methods
    that sum their kept entries (DARE-linear, magnitude prune, breadcrumbs) are taken as
    ``lambda`` each; TIES / DARE-TIES (a mean over the agreeing experts), EMR, Fisher, RegMean,
    SLERP and the searches as the uniform ``1/k`` (an approximation: their weights depend on the
    entries)."""
    lam = float(params.get("lambda", 1.0))
    if method in SUM_METHODS:
        return np.full(k, lam)
    if method in ("ties", "dare_ties", "consensus"):
        return np.full(k, lam / k)
    return np.full(k, 1.0 / k)


def _orders(plan: dict) -> dict[int, list[int]]:
    idx = {n: i for i, n in enumerate(plan["experts"])}
    return {int(s): [idx[n] for n in names] for s, names in plan["orders"].items()}


def theorem1_fired(plan: dict, method: str, params: dict[str, Any], k_end: int) -> dict[str, Any]:
    """Theorem 1 (eq. 18) for ``method`` along each seed's order: fired k per seed and their mean."""
    stop = plan["stop"]
    cov = covariance_from(plan["variances"], np.asarray(plan["correlation"]))
    per_seed, fired_any, deltas = [], False, []
    for _, order in sorted(_orders(plan).items()):
        v = general_variance_curve(cov, order[:k_end], lambda k: method_weights(method, params, k))
        # (a sum adds variance from the second expert: no positive drop to scale, it stops at 1)
        delta, fire = theorem1_rule(v, stop["delta_mode"], stop["delta_value"])
        per_seed.append(fire.fired_k)
        fired_any |= fire.fired
        deltas.append(float("nan") if delta is None else delta)
    per_seed = [int(k) for k in per_seed]
    return {"fired_k": float(np.mean(per_seed)), "per_seed": per_seed, "fired": fired_any, "delta": deltas}


def as_k(k: Any) -> int | None:
    """A k as report.json and rules.parquet hold it: an int (a whole number of experts), or None."""
    if k is None or (isinstance(k, float) and not math.isfinite(k)):
        return None
    if float(k) != int(k):
        raise ValueError(f"not a whole k: {k!r}")
    return int(k)


def seed_peaks(f: pd.DataFrame, value: str) -> dict[str, Any]:
    """Per seed, the k of the best validation ``value`` (highest fitness, lowest cross-entropy;
    ties: smallest k); the mean, min and max over seeds."""
    ks = []
    for _, g in f.groupby("seed"):
        g = g.dropna(subset=[value]).sort_values("k")
        if g.empty:
            continue
        i = g[value].idxmin() if value == "cross_entropy" else g[value].idxmax()
        ks.append(int(g.loc[i, "k"]))
    if not ks:
        return {"peak_k": float("nan"), "peak_min": None, "peak_max": None, "n_seeds": 0}
    return {"peak_k": float(np.mean(ks)), "peak_min": min(ks), "peak_max": max(ks), "n_seeds": len(ks)}


def peaks_split(pk: dict[str, Any]) -> bool:
    """The seeds' peaks lie more than 2 apart (e.g. 2 and 6): no k is within +-1 of every seed's
    peak, so their mean (4) is no measured peak, and a rule firing there would be credited for a k
    that no seed's curve has at its top. Such rows are not judged."""
    return pk["peak_min"] is not None and pk["peak_max"] - pk["peak_min"] > 2


def _loss(f: pd.DataFrame, value: str) -> np.ndarray:
    v = f[value].to_numpy(float)
    return v if value == "cross_entropy" else -v


def _base_value(fitness: pd.DataFrame, gains: dict | None, first_tasks: list, value: str, target: str) -> float:
    if target == "union":
        if not gains or not first_tasks:
            return float("nan")
        vals = [gains["base"][t] for t in first_tasks if t in gains.get("base", {})]
        return float(np.mean(vals)) if vals else float("nan")
    b = fitness[(fitness["method"] == "base") & (fitness["target"] == "all") & (fitness["split"] == "validation")]
    return float(b[value].mean()) if not b.empty else float("nan")


def cut_searches(search_stop: dict | None, stop: dict, full_grid: list[int],
                 search_methods: list[str]) -> dict[str, int]:
    """Search method -> the last k it ran, for the searches whose grid the enforced stop rule
    cut before its end: the online rule while they ran (``search_stop.json``), or Theorem 1 in
    the plan (``stop["search_k"]`` shorter than ``full_grid``, the grid without the rule)."""
    if stop.get("enabled") and stop.get("rule") == "theorem1":
        ran = stop.get("search_k") or []
        if ran and full_grid and max(ran) < max(full_grid):
            return {m: int(max(ran)) for m in search_methods}
        return {}
    if not search_stop or not search_stop.get("enforced") or not full_grid:
        return {}
    out = {}
    for method, d in (search_stop.get("methods") or {}).items():
        ran = d.get("ks_run") or []
        if d.get("fired") and ran and max(ran) < max(full_grid):
            out[method] = int(max(ran))
    return out


def judge(plan: dict, fitness: pd.DataFrame, *, scale_cfg, pca_count: int | None, gains: dict | None,
          cut: dict[str, int] | None = None,
          law_ses: dict[tuple[str, bool, str], list[float]] | None = None,
          pca_missing: str | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(records, fits)``: one record per (rule, method, target) ``{rule, method, target,
    fired_k, fired, peak_k, peak_min, peak_max, error, cut_at, tol, se, k_first, k_last}`` (the
    last two: the curve's first and last measured k) and the law's fits (all
    k and k <= m). ``cut``: method -> the k where the enforced stop cut its curve
    (:func:`cut_searches`); those rows get ``error`` None (not judged), as do rows whose seeds'
    peaks lie more than 2 apart (``peaks_split``: :func:`peaks_split`). ``law_ses``:
    ``(method, rht, target)`` -> the paired SEs of the consecutive steps on k <= m
    (:func:`evomerge.pipelines.scale.law_noise.law_step_ses`; None or missing: a run without
    per-example scores); the law's tolerance is then ``max(tol, scale.law_noise_z x SE)`` and
    its rows carry the SE (``se``: NaN where unknown; None on the other rules).

    Every k of a record (``fired_k``, ``keeps_k``, ``k_first``, ...) is an int or None;
    ``theorem1``'s rows also carry ``fired_k_seeds`` (each seed's order's k), and when the seeds'
    orders fire at different k (``scale.order: random``) their ``fired_k`` is None and the error
    is taken from the seeds' mean (``fired_k_mean``), a mean as ``peak_k`` is. ``unavailable``:
    why a rule has no k at all (``pca_missing``: the run has no pool analysis), else None."""
    cut = cut or {}
    z = float(scale_cfg.law_noise_z)
    records, fits = [], []
    k_end = int(plan["stop"]["k_end"])
    m = scale_cfg.law_first_k
    val = fitness[(fitness["split"] == "validation") & fitness["kind"].isin(["merge", "search"])]
    for (method, rht), mg in val.groupby(["method", "rht"]):
        params = dict((scale_cfg.method_params or {}).get(method, {}))
        t1 = theorem1_fired(plan, method, params, k_end)
        label = f"{method}+rht" if rht else method
        for tname, value, target in TARGETS:
            f = mg[mg["target"] == target].sort_values(["k", "seed"])
            if f.empty or f[value].isna().all():
                continue
            f = f.dropna(subset=[value])
            pk = seed_peaks(f, value)
            k_first = int(f["k"].min())
            names = plan["experts"]
            first_tasks = [plan["expert_tasks"][names.index(e)] for e in str(f[f["k"] == k_first]["experts"].iloc[0]).split(",")]
            base = _base_value(fitness, gains, first_tasks, value, target)
            tol = online_tolerance(scale_cfg.online_tol, f[f["k"] == k_first][value].to_numpy(float), base)
            x, y = f["k"].to_numpy(float), _loss(f, value)
            rows = {"theorem1": (t1["fired_k"], t1["fired"]), "pca95": (pca_count, pca_count is not None)}
            one_k = len(set(t1["per_seed"])) == 1
            keeps = None
            if x.size and np.unique(x).size >= 2:
                on = online_stop(x, y, tol=tol, window=scale_cfg.online_window)
                rows["online"] = (on.fired_k, on.fired)
                keeps = on.best_k
            se = step_se((law_ses or {}).get((str(method), bool(rht), tname), []))
            tol_law = law_tolerance(tol, se, z)
            if np.unique(x[x <= m]).size >= 3 and tol_law > 0:
                lp = law_peak(x, y, m=m, tol=tol_law, k_cap=k_end)
                rows[f"law_k<={m}"] = (lp.predicted_k, not lp.beyond)
                fits.append(_fit_row(label, tname, f"k<={m}", lp.fit))
            if np.unique(x).size >= 3:
                try:
                    fits.append(_fit_row(label, tname, "all k", fit_scaling_law(x, y)))
                except EvomergeError:
                    pass
            cut_at = cut.get(method)
            split = peaks_split(pk)
            for rule, (fired_k, fired) in rows.items():
                err = (fired_k - pk["peak_k"]) if fired_k is not None and math.isfinite(pk["peak_k"]) else None
                if cut_at is not None or split:
                    err = None
                t1_row = rule == "theorem1"
                records.append({"rule": rule, "method": label, "target": tname,
                                "fired_k": None if t1_row and not one_k else as_k(fired_k),
                                "fired_k_seeds": t1["per_seed"] if t1_row else None,
                                "fired_k_mean": t1["fired_k"] if t1_row else None,
                                "unavailable": pca_missing if rule == "pca95" and pca_count is None else None,
                                "fired": bool(fired),
                                "peak_k": pk["peak_k"], "peak_min": pk["peak_min"], "peak_max": pk["peak_max"],
                                "error": err, "tol": tol_law if rule.startswith("law") else tol if rule == "online" else None,
                                "se": se if rule.startswith("law") else None,
                                "keeps_k": as_k(keeps) if rule == "online" else None, "cut_at": as_k(cut_at),
                                "peaks_split": split,
                                "k_first": k_first, "k_last": int(f["k"].max())})
    return records, fits


def _fit_row(label: str, target: str, on: str, fit) -> dict[str, Any]:
    return {"method": label, "target": target, "points": on, "L_inf": fit.L_inf, "A": fit.A, "b": fit.b,
            "r2": fit.r2, "n_points": fit.n_points, "n_k": fit.n_k, "n_params": fit.n_params}


def pair_summary(fitness: pd.DataFrame, plan: dict, gains: dict | None) -> list[dict[str, Any]]:
    """The correlated-pair experiment: per method, the validation union fitness of the related
    pairs against the unrelated ones, and the share of the two experts' own gain kept."""
    pairs = plan.get("pairs") or {}
    if not pairs.get("related"):
        return []
    names = plan["experts"]
    kind_of = {tuple(p): "related" for p in pairs["related"]} | {tuple(p): "unrelated" for p in pairs["unrelated"]}
    f = fitness[(fitness["kind"] == "pair") & (fitness["target"] == "union") & (fitness["split"] == "validation")]
    out = []
    for (method, experts), g in f.groupby(["method", "experts"]):
        idx = tuple(names.index(n) for n in experts.split(","))
        kept = float("nan")
        if gains:
            tasks = [plan["expert_tasks"][i] for i in idx]
            own = np.mean([gains["experts"][names[i]][t] for i, t in zip(idx, tasks)])
            base = np.mean([gains["base"][t] for t in tasks])
            kept = (g["fitness"].mean() - base) / (own - base) if own != base else float("nan")
        out.append({"method": method, "pair": experts, "kind": kind_of.get(idx, "?"), "fitness": float(g["fitness"].mean()),
                    "gain_kept": float(kept)})
    return out
