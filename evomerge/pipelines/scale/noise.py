"""Evaluation noise of a scale run's curves: the per-example values each cell left on disk
(``examples/<cell>.parquet``) through :mod:`evomerge.evaluation.bootstrap`.

One bootstrap per split: every task's rows redrawn with replacement, the same redrawn rows for
every cell, so intervals of differences (two k, two methods) are paired. A curve point (method,
rht, target, k) is computed as :func:`evomerge.pipelines.scale.tables.curve` computes it: the
mean over the target's tasks (``all``: every task, ``union``: the cell's merged experts' tasks,
``all/ce``: cross-entropy over every task), then over the point's seed rows.

A point whose cells lack their examples (a run resumed from a directory made before
``examples/`` existed: the old cells have none, the new ones have them) has a row with its
value and no interval, and its curve no ``p_best`` / ``within_noise``; the report lists those
points (:func:`lacking_text`). A point all of whose cells have them gets its interval as usual.

Validation chooses k, so ``p_best`` (the share of replicates in which a k is its curve's best)
and ``within_noise`` (the k whose paired difference from the measured best k has a 95% interval
containing 0) are given on validation only; test points carry their interval.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from evomerge.errors import DataError
from evomerge.evaluation.bootstrap import (Replicates, aggregate, best_share, paired_difference, percentile_interval,
                                           task_means, within_noise)

REPLICATES = 2000
SEED = 0
LEVEL = 0.95
COLUMNS = ["method", "rht", "target", "split", "k", "value", "low", "high", "p_best", "within_noise"]
TARGETS = (("all", "score", False), ("union", "score", True), ("all/ce", "cross_entropy", False))
TOL = 1e-9  # an example table whose mean differs from the cell's score by more belongs to another run


def empty_table() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
        COLUMNS, ["str", "bool", "str", "str", "int64", "float64", "float64", "float64", "float64", "object"])})


@dataclass
class Noise:
    """``table``: one row per curve point (:data:`COLUMNS`); per split, ``reps`` the points'
    replicates, ``keys`` their ``(method, rht, target, k)`` in the replicates' column order and
    ``rows`` the number of examples of each task."""

    table: pd.DataFrame
    reps: dict[str, Replicates] = field(default_factory=dict)
    keys: dict[str, list] = field(default_factory=dict)
    rows: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return not self.table.empty


def noise_tables(scores: pd.DataFrame, examples: pd.DataFrame | None, fitness: pd.DataFrame | None = None, *,
                 replicates: int = REPLICATES, seed: int = SEED, level: float = LEVEL) -> Noise:
    """The evaluation noise of every curve point. ``scores``: the run's per-task score rows;
    ``examples``: its per-example rows (cell, task, split, row, score, cross_entropy, rht);
    ``fitness``: :func:`~evomerge.pipelines.scale.tables.fitness_table` of ``scores`` (computed
    when not given). An empty table when no curve cell has examples (a run from before they
    were kept)."""
    scores = scores[scores["kind"] != "pair"]
    out = Noise(empty_table())
    if examples is None or examples.empty or scores.empty:
        return out
    if fitness is None:
        from evomerge.pipelines.scale.tables import fitness_table

        fitness = fitness_table(scores)
    fitness = fitness[fitness["kind"] != "pair"]
    tables = []
    for split, s in scores.groupby("split", sort=True):
        ex = examples[examples["split"] == split]
        split = str(split)
        table, rep, keys, rows = _split_noise(s, ex, fitness[fitness["split"] == split], split, replicates, seed, level)
        if rep is not None:
            out.reps[split], out.keys[split], out.rows[split] = rep, keys, rows
        tables.append(table)
    if tables:
        out.table = pd.concat(tables, ignore_index=True)[COLUMNS].sort_values(
            ["target", "split", "method", "rht", "k"], ignore_index=True)
    return out


def reference_method(peaks_all: pd.DataFrame, registry_methods: list[str]) -> str | None:
    """The registry merge (one merged model: not a per-task method such as EMR) with the best
    validation value at its best k on all tasks without RHT (ties: the first by name)."""
    from evomerge.merging.registry import get_merge_method

    pk = peaks_all[~peaks_all["rht"].astype(bool) & peaks_all["method"].isin(registry_methods)]
    pk = pk[[not get_merge_method(m).per_task for m in pk["method"]]].sort_values("method")
    return None if pk.empty else str(pk.loc[pk["val_mean"].idxmax(), "method"])


def cell_units(s: pd.DataFrame) -> pd.DataFrame:
    """One row per (cell, rht) of a split: method, k, the number of seed rows (its weight in the
    seed mean) and its tasks."""
    g = s.groupby(["cell", "rht"], sort=True)
    return pd.DataFrame({"method": g["method"].first(), "k": g["k"].first(), "kind": g["kind"].first(),
                         "seeds": g["seed"].nunique()}).reset_index()


def example_matrices(s: pd.DataFrame, ex: pd.DataFrame, units: pd.DataFrame, split: str):
    """Per task: the units' per-example scores and cross-entropies ((U', n) each, U' = the
    units with examples, in ``present`` order), after checking every unit has the same rows and
    that their means are the unit's scores."""
    rht = ex["rht"]
    if rht.isna().any():  # a cell file without the column holds one variant: the scores' one
        rht = rht.fillna(ex["cell"].map(s.groupby("cell")["rht"].first()))
    unit = pd.MultiIndex.from_frame(units[["cell", "rht"]]).get_indexer(
        pd.MultiIndex.from_arrays([ex["cell"], rht.astype(bool)]))
    tasks = sorted(s["task"].unique())
    task = pd.Categorical(ex["task"], categories=tasks).codes
    keep = (unit >= 0) & (task >= 0)  # rows of cells and tasks on no curve are not needed
    row = ex["row"].to_numpy()
    order = np.lexsort((row[keep], unit[keep], task[keep]))  # by task, then unit, then row
    take = np.flatnonzero(keep)[order]
    unit, task, row = unit[take], task[take], row[take]
    vals = {c: ex[c].to_numpy(np.float64)[take] for c in ("score", "cross_entropy")}
    present = sorted(set(unit.tolist()))
    bounds = np.searchsorted(task, np.arange(len(tasks) + 1))
    per_task = s.groupby(["cell", "rht", "task"])[["score", "cross_entropy"]].first()

    def name(u) -> str:
        return f"examples/{units.at[u, 'cell']}.parquet"

    sc, ce = {}, {}
    for j, task_name in enumerate(tasks):
        sl = slice(bounds[j], bounds[j + 1])
        by_unit = pd.Series(unit[sl]).value_counts().reindex(present, fill_value=0)
        n = int(by_unit.max())
        if (by_unit != n).any():
            u = by_unit.index[(by_unit != n).to_numpy()][0]
            raise DataError(f"{name(u)}: {by_unit[u]} {split} rows of task {task_name!r} (rht="
                            f"{bool(units.at[u, 'rht'])}), other cells have {n}: pairing needs the same rows")
        rows = row[sl].reshape(len(present), n)
        bad = np.flatnonzero((rows != rows[0]).any(axis=1))
        if bad.size:
            raise DataError(f"{name(present[bad[0]])}: task {task_name!r} {split} rows differ from the other cells' "
                            "rows: pairing needs the same rows")
        x = {c: v[sl].reshape(len(present), n) for c, v in vals.items()}
        ref = per_task.reindex(pd.MultiIndex.from_arrays(
            [units["cell"].to_numpy()[present], units["rht"].to_numpy()[present], [task_name] * len(present)]))
        for col, values in x.items():
            want = ref[col].to_numpy(np.float64)
            off = np.flatnonzero(np.isfinite(want) & (np.abs(values.mean(axis=1) - want) > TOL * np.maximum(1.0, np.abs(want))))
            if off.size:
                raise DataError(f"{name(present[off[0]])}: task {task_name!r} {split} mean {col} "
                                f"{values[off[0]].mean():.6g} is not the cell's {want[off[0]]:.6g}")
        sc[task_name], ce[task_name] = x["score"], x["cross_entropy"]
    return tasks, present, sc, ce


def union_mask(s: pd.DataFrame, units: pd.DataFrame, present: list, tasks: list) -> np.ndarray:
    """``(len(present), len(tasks))``: the tasks that count in each unit's ``union`` value (its
    merged experts' tasks); a unit without any (the base model) keeps every task."""
    subset = s.groupby(["cell", "rht", "task"])["in_subset"].first()
    u = len(present)
    cells, rhts = units["cell"].to_numpy()[present], units["rht"].to_numpy()[present]
    own = subset.reindex(pd.MultiIndex.from_arrays([np.repeat(cells, len(tasks)), np.repeat(rhts, len(tasks)),
                                                    np.tile(tasks, u)])).fillna(False).to_numpy(bool).reshape(u, len(tasks))
    return own | ~own.any(axis=1, keepdims=True)


def _split_noise(s, ex, fitness, split, replicates, seed, level):
    """The split's points: an interval for each point all of whose cells have their examples;
    a row without one (``low``/``high`` NaN) for a point some of whose cells lack them (a run
    resumed from a directory made before ``examples/`` existed); the replicates of the points
    with any examples (None when no cell of the split has them)."""
    units = cell_units(s)
    if ex.empty:
        tasks, present, sc, ce = sorted(s["task"].unique()), [], {}, {}
        has_ce = bool(np.isfinite(s["cross_entropy"].to_numpy(np.float64)).all())
    else:
        tasks, present, sc, ce = example_matrices(s, ex, units, split)
        # cross-entropy where every example has one: a metric-only evaluation leaves it NaN, and
        # `all/ce` then has no interval
        has_ce = all(np.isfinite(ce[t]).all() for t in tasks)
    u = len(present)
    # one bootstrap of the task means, rows 0..u-1 the units' scores, u..2u-1 their cross-entropy
    n_rows = 2 * u if has_ce else u
    pos = {unit: i for i, unit in enumerate(present)}
    means = (task_means({t: np.vstack([sc[t], ce[t]]) if has_ce else sc[t] for t in tasks}, replicates=replicates,
                        seed=seed, stream=(split,)) if u else None)
    keys, values, boots, complete, lacking = [], [], [], [], []
    for target, col, union in TARGETS:
        if col == "cross_entropy" and not has_ce:
            continue
        mask = np.ones((n_rows, len(tasks)), bool)
        if union and u:  # a cell's own tasks; a cell without any (the base model) is in no `union` point
            mask[:u] = union_mask(s, units, present, tasks)
        pts, tkeys = [], []
        for (method, rht, k), g in units.groupby(["method", "rht", "k"], sort=True):
            if union and method == "base":
                continue
            key = (method, bool(rht), target, int(k))
            w = np.zeros(n_rows)
            for unit, seeds in g["seeds"].items():
                if unit in pos:
                    w[pos[unit] + (u if col == "cross_entropy" else 0)] = seeds
            if w.sum() == 0:
                lacking.append(key)  # no cell of this point has examples: no replicates either
                continue
            complete.append(all(unit in pos for unit in g.index))
            tkeys.append(key)
            pts.append(w)
        if pts:
            rep = aggregate(means, mask, np.array(pts))
            keys += tkeys
            values.append(rep.value)
            boots.append(rep.boot)
    rep = Replicates(np.concatenate(values), np.concatenate(boots, axis=1)) if keys else None
    ok = np.array(complete, bool)
    table = pd.DataFrame(keys + lacking, columns=["method", "rht", "target", "k"])
    table["split"] = split
    table["value"] = _values(fitness, keys + lacking)
    low, high = np.full(len(table), np.nan), np.full(len(table), np.nan)
    if rep is not None:
        lo, hi = percentile_interval(rep.boot, level)
        low[:len(keys)], high[:len(keys)] = np.where(ok, lo, np.nan), np.where(ok, hi, np.nan)
    table["low"], table["high"] = low, high
    table["p_best"] = np.nan
    table["within_noise"] = pd.Series([None] * len(table), dtype=object)
    if split == "validation" and rep is not None:
        _curve_choices(table, rep, np.concatenate([ok, np.zeros(len(lacking), bool)]), table["value"].to_numpy(), level)
    return table, rep, keys, {t: int(sc[t].shape[1]) for t in sc}


def lacking_text(records: list[dict]) -> str | None:
    """The report's sentence on the points without an interval (``records``: the noise table's
    rows, ``low`` NaN or None where a point has none: some of its cells have no per-example
    scores, the only reason a row lacks one), or None when every point has its interval."""
    import math

    by_method: dict[str, dict[tuple, list[int]]] = {}
    for r in records:
        if r.get("low") is None or (isinstance(r["low"], float) and math.isnan(r["low"])):
            by_method.setdefault(r["method"], {}).setdefault((bool(r["rht"]), r["target"], r["split"]), []).append(int(r["k"]))
    if not by_method:
        return None
    n = sum(len(ks) for m in by_method.values() for ks in m.values())
    parts = []
    for method, where in sorted(by_method.items()):
        ks = {tuple(sorted(v)) for v in where.values()}
        if len(ks) == 1:  # the same k on every variant, target and split listed: one entry
            rhts = sorted({w[0] for w in where})
            variant = {(False,): "", (True,): " with RHT", (False, True): " plain and with RHT"}[tuple(rhts)]
            parts.append(f"{method}{variant} ({', '.join(sorted({w[1] for w in where}))}; "
                         f"{', '.join(sorted({w[2] for w in where}))}): k = {', '.join(map(str, ks.pop()))}")
        else:
            parts += [f"{method}{' with RHT' if rht else ''} ({target}; {split}): k = {', '.join(map(str, sorted(v)))}"
                      for (rht, target, split), v in sorted(where.items())]
    return (f"{n} curve point(s) have no interval: some of their cells have no per-example scores (`examples/`; "
            "this run directory was made before they were kept, and those cells were not run again), so their "
            "replicates cannot be drawn; a curve with such a point has no p(best) and no k within noise either. "
            f"The points (method, targets; splits): {'; '.join(parts)}.")


def _values(f: pd.DataFrame, keys: list) -> np.ndarray:
    """The points' seed means as the fitness table ``f`` gives them (what the report prints)."""
    means = {"all": f[f["target"] == "all"].groupby(["method", "rht", "k"])["fitness"].mean(),
             "union": f[f["target"] == "union"].groupby(["method", "rht", "k"])["fitness"].mean(),
             "all/ce": f[f["target"] == "all"].groupby(["method", "rht", "k"])["cross_entropy"].mean()}
    return np.array([float(means[target].get((method, rht, k), np.nan)) for method, rht, target, k in keys])


def _curve_choices(table: pd.DataFrame, rep: Replicates, ok: np.ndarray, value: np.ndarray, level: float) -> None:
    """``p_best`` and ``within_noise`` on each validation curve over k >= 1 (methods that merge:
    not the base model, not the first expert alone), measured best k as the report's peaks
    (ties: the smallest k)."""
    for (method, rht, target), g in table.groupby(["method", "rht", "target"], sort=False):
        if method in ("base", "expert"):
            continue
        g = g[g["k"] >= 1].sort_values("k")
        idx = g.index.to_numpy()
        if idx.size == 0 or not ok[idx].all() or not np.isfinite(value[idx]).all():
            continue
        lower = target == "all/ce"
        best = idx[int(np.argmin(value[idx]) if lower else np.argmax(value[idx]))]
        table.loc[idx, "p_best"] = best_share(rep.boot[:, idx], lower_is_better=lower)
        table.loc[idx, "within_noise"] = pd.Series(within_noise(rep, idx, best, level).tolist(), index=idx, dtype=object)


def compare_to_reference(noise: Noise, peaks_all: pd.DataFrame, reference: str | None, *, split: str = "test",
                         level: float = LEVEL) -> list[dict]:
    """Each method's point at its validation-chosen k (``peaks_all``, without RHT) minus the
    reference method's at its own, on ``split`` and target ``all``: the measured difference and
    the paired interval (``separated``: the interval excludes 0)."""
    if reference is None or split not in noise.reps:
        return []
    pk = peaks_all[~peaks_all["rht"].astype(bool)].set_index("method")
    if reference not in pk.index:
        return []
    pos = {key: i for i, key in enumerate(noise.keys[split])}
    t = noise.table
    ok = t[t["split"] == split].set_index(["method", "rht", "target", "k"])["low"].notna()
    ref_key = (reference, False, "all", int(pk.loc[reference, "peak_k"]))
    if ref_key not in pos or not ok.get(ref_key, False):
        return []
    out = []
    for method, row in pk.iterrows():
        key = (method, False, "all", int(row["peak_k"]))
        if method == reference or key not in pos or not ok.get(key, False):
            continue
        d, lo, hi = paired_difference(noise.reps[split], pos[key], pos[ref_key], level)
        out.append({"method": method, "k": key[3], "reference": reference, "reference_k": ref_key[3], "split": split,
                    "target": "all", "difference": d, "low": lo, "high": hi, "separated": bool(lo > 0 or hi < 0)})
    return out
