"""The scale report: merged Parquet tables, figures and ``report.md`` from a run directory.

``write_report(run_dir)`` needs only what the run left on disk (``plan.json``, ``cells/``,
``samples/``, ``analysis/``), so ``evomerge report RUN_DIR`` regenerates it at any time,
including for a run that was interrupted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from evomerge.errors import ConfigError
from evomerge.io import atomic_file, write_json_atomic, write_parquet_atomic
from evomerge.scale.store import CellStore
from evomerge.scale.tables import fitness_table, method_label, peaks


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """(plan, per-task scores, weight samples) of a run directory."""
    run_dir = Path(run_dir)
    plan_path = run_dir / "plan.json"
    if not plan_path.is_file():
        raise ConfigError(f"{run_dir}: not a scale run directory (plan.json missing)")
    plan = json.loads(plan_path.read_text())
    store = CellStore(run_dir)
    scores, samples = store.scores().to_pandas(), store.samples().to_pandas()
    # only the current plan's cells: a run continued with other `stop`/`k_max` keeps older files
    from evomerge.scale.plan import load_cells

    ids = {c.id for c in load_cells(plan)}
    return plan, scores[scores["cell"].isin(ids)].reset_index(drop=True), samples[samples["cell"].isin(ids)].reset_index(drop=True)


def scaling_fits(fitness: pd.DataFrame, eps: float, transform: str = "one_minus") -> tuple[pd.DataFrame, dict[str, Any]]:
    """Fit ``1 - fitness = L_inf + A / k^b`` per method on the all-tasks validation fitness
    (every seed a point) and predict the saturation k (fitted gain per expert < ``eps``)."""
    from evomerge.errors import EvomergeError
    from evomerge.theory import fit_fitness_scaling

    f = fitness[(fitness["target"] == "all") & (fitness["split"] == "validation") & (fitness["k"] >= 1)]
    rows, objs = [], {}
    for (method, rht), g in f.groupby(["method", "rht"]):
        if method in ("base", "expert") or g["k"].nunique() < 3:
            continue
        try:
            fit = fit_fitness_scaling(g["k"].to_numpy(float), g["fitness"].to_numpy(float), transform=transform)
        except EvomergeError:
            continue
        sat = fit.k_marginal_below(eps, k_max=10_000)
        objs[method_label(method, bool(rht))] = fit
        rows.append({
            "method": method, "rht": bool(rht), "label": method_label(method, bool(rht)),
            "L_inf": fit.L_inf, "A": fit.A, "b": fit.b, "r2": fit.r2,
            "predicted_saturation_k": sat if sat is not None else -1,
        })
    cols = ["method", "rht", "label", "L_inf", "A", "b", "r2", "predicted_saturation_k"]
    return pd.DataFrame(rows, columns=cols), objs


def weight_histograms(samples: pd.DataFrame, fig_dir: Path) -> dict[str, str]:
    """Per method: entries of the merged task vector at the largest k, without and with RHT."""
    from evomerge.analysis.figures import plot_weight_histograms

    out = {}
    for method, s in samples.groupby("method"):
        k = int(s["k"].max())
        s = s[s["k"] == k]
        hist = {f"{method} k={k}" + (" + RHT" if rht else ""): g["value"].to_numpy()
                for rht, g in s.groupby("rht")}
        path = plot_weight_histograms(hist, fig_dir / f"weight_hist_{method}.png")
        out[f"weight_hist_{method}"] = f"figures/{path.name}"
    return out


def _fmt(x: float, nd: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{nd}f}"


def write_report(run_dir: str | Path) -> Path:
    """Write ``tables/*.parquet``, ``figures/*.png``, ``report.json`` and ``report.md``."""
    from evomerge.config import load_config
    from evomerge.scale.figures import plot_fitness_panels

    run_dir = Path(run_dir)
    plan, scores, samples = load_run(run_dir)
    cfg = load_config(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else None
    eps = cfg.scale.saturation_eps if cfg else 0.005
    metric = cfg.evaluation.metric if cfg else "score"
    transform = "negate" if metric == "neg_cross_entropy" else "one_minus"
    stop = plan["stop"]
    tables, figs = run_dir / "tables", run_dir / "figures"

    fitness = fitness_table(scores)
    pk_all, pk_union = peaks(fitness, target="all"), peaks(fitness, target="union")
    fits, fit_objs = scaling_fits(fitness, eps, transform)
    write_parquet_atomic(tables / "scores.parquet", pa.Table.from_pandas(scores, preserve_index=False))
    write_parquet_atomic(tables / "fitness.parquet", pa.Table.from_pandas(fitness, preserve_index=False))
    write_parquet_atomic(tables / "theory.parquet", pa.Table.from_pylist(stop["curve"]))
    write_parquet_atomic(tables / "peaks.parquet", pa.Table.from_pandas(
        pd.concat([pk_all.assign(target="all"), pk_union.assign(target="union")], ignore_index=True), preserve_index=False))
    write_parquet_atomic(tables / "scaling_fits.parquet", pa.Table.from_pandas(fits, preserve_index=False))

    figures: dict[str, str] = {}
    if not fitness.empty:
        plot_fitness_panels(fitness, figs / "fitness_vs_k.png", n_max=stop["n_max"], stop_enabled=stop["enabled"],
                            ylabel=f"{metric} (mean over tasks)")
        figures["fitness_vs_k"] = "figures/fitness_vs_k.png"
    if not samples.empty:
        figures.update(weight_histograms(samples, figs))
    analysis = run_dir / "analysis"
    for name in ("pca_cumulative", "principal_angles", "correlation", "variance_floor", "merged_weight_hist"):
        if (analysis / f"{name}.png").is_file():
            figures[name] = f"analysis/{name}.png"

    summary = _summary(plan, fitness, pk_all, pk_union, fits, figures, run_dir)
    write_json_atomic(run_dir / "report.json", summary)
    md = _markdown(plan, cfg, summary, pk_all, pk_union, fits, figures, run_dir)
    path = run_dir / "report.md"
    with atomic_file(path, "w") as fh:
        fh.write(md)
    return path


def _base_all(fitness: pd.DataFrame, split: str) -> float:
    b = fitness[(fitness["method"] == "base") & (fitness["target"] == "all") & (fitness["split"] == split)]
    return float(b["fitness"].mean()) if not b.empty else float("nan")


def _abs_error(pk: pd.DataFrame, n_max: int) -> float | None:
    """Mean |measured peak k - n_max| over methods."""
    return float((pk["peak_k"] - n_max).abs().mean()) if len(pk) else None


def _summary(plan, fitness, pk_all, pk_union, fits, figures, run_dir) -> dict[str, Any]:
    stop = plan["stop"]
    ks = sorted(int(k) for k in fitness["k"].unique()) if not fitness.empty else []
    timing = json.loads((run_dir / "timing.json").read_text()) if (run_dir / "timing.json").is_file() else []
    return {
        "n_experts": len(plan["experts"]),
        "sigma2": stop["sigma2"], "rho": stop["rho"], "delta": stop["delta"], "delta_mode": stop["delta_mode"],
        "n_max": stop["n_max"], "stop_enabled": stop["enabled"], "k_end": stop["k_end"],
        "k_measured_max": max(ks) if ks else 0,
        "cells_done": int(fitness["cell"].nunique()) if not fitness.empty else 0,
        "cells_planned": len(plan["cells"]),
        "base_fitness_all": {"validation": _base_all(fitness, "validation"), "test": _base_all(fitness, "test")},
        "peaks_all": pk_all.to_dict(orient="records"),
        "peaks_union": pk_union.to_dict(orient="records"),
        "scaling_fits": fits.to_dict(orient="records"),
        "stop_rule_abs_error": _abs_error(pk_all, stop["n_max"]),
        "stop_rule_abs_error_union": _abs_error(pk_union, stop["n_max"]),
        "wall_seconds": sum(s["seconds"] for s in timing),
        "figures": figures,
        "zoo_profile": plan.get("zoo_profile"),
    }


def _markdown(plan, cfg, s, pk_all, pk_union, fits, figures, run_dir) -> str:
    stop = plan["stop"]
    order_names = next(iter(plan["orders"].values())) if plan["orders"] else []
    L: list[str] = ["# Scale report", ""]
    L += [
        f"Run `{run_dir}`: {s['n_experts']} {plan.get('kind', '')} experts "
        f"({', '.join(plan['experts'])}); {s['cells_done']} of {s['cells_planned']} cells done; "
        f"wall time {s['wall_seconds'] / 60:.1f} min.",
        "",
    ]
    if cfg is not None:
        sc = cfg.scale
        L += [
            f"Methods: {', '.join(sc.methods + list(sc.search))}; RHT variants: {'yes' if sc.with_rht else 'no'}; "
            f"seeds: {sc.seeds}; expert order: `{sc.order}`"
            + (f" ({' > '.join(order_names)})" if sc.order != "random" else " (a new order per seed)")
            + f"; metric: `{cfg.evaluation.metric}`.",
            "",
        ]
    # --- stop rule
    L += ["## Variance-drop stop rule (Theorem 1)", ""]
    L += [
        f"From the task vectors: sigma^2 = {stop['sigma2']:.4g}, rho = {stop['rho']:.4f}. "
        f"Delta = {stop['delta']:.4g} ({stop['delta_mode']}). "
        f"**n_max = {stop['n_max']}**: the drop in merged variance from adding expert {stop['n_max'] + 1} "
        f"falls below Delta.",
        "",
    ]
    if stop["enabled"] and stop["k_end"] < stop["n_max"]:
        L.append(f"The run reached its largest k = {stop['k_end']} (pool size / `scale.k_max`) before the stop "
                 f"criterion fired (n_max = {stop['n_max']}).")
    elif stop["enabled"]:
        L.append(f"The stop criterion fired at n_max = {stop['n_max']}: the run stopped adding experts at k = {stop['k_end']}.")
    else:
        L.append(f"Run with `--no-stop` to k = {stop['k_end']}; the stop criterion would have fired at n_max = {stop['n_max']}.")
    L += ["", "| k | merged variance | drop from k-1 | worth adding (drop >= Delta) |", "|---|---|---|---|"]
    for r in stop["curve"]:
        drop = f"{r['drop']:.4g}" if r["k"] > 1 else "-"
        L.append(f"| {r['k']} | {r['merged_variance']:.4g} | {drop} | {'yes' if r['worth_adding'] else 'no'} |")
    # --- peaks
    base_v = s["base_fitness_all"]["validation"]
    L += ["", "## Where each method peaked", "",
          "Peak = the k with the best mean validation fitness over seeds (ties: smallest k); test is "
          "reported at that k, never used to choose.", "",
          f"### Target `all` (every task of the pool; base model: {_fmt(base_v)})", "",
          "| method | peak k | validation (mean ± sd) | test at peak | gain vs base | largest k run |",
          "|---|---|---|---|---|---|"]
    for r in pk_all.itertuples():
        L.append(f"| {r.label} | {r.peak_k} | {r.val_mean:.3f} ± {r.val_std:.3f} | {_fmt(r.test_mean)} | "
                 f"{_fmt(r.val_mean - base_v)} | {r.k_max_run} |")
    L += ["", "### Target `union` (only the tasks of the k merged experts)", "",
          "| method | peak k | validation (mean ± sd) | test at peak | largest k run |", "|---|---|---|---|---|"]
    for r in pk_union.itertuples():
        L.append(f"| {r.label} | {r.peak_k} | {r.val_mean:.3f} ± {r.val_std:.3f} | {_fmt(r.test_mean)} | {r.k_max_run} |")
    # --- prediction vs measurement
    L += ["", "## How close the predictions were", ""]
    if len(pk_all):
        err = s["stop_rule_abs_error"]
        L.append(f"Stop rule: n_max = {stop['n_max']} vs the measured peaks; mean |peak k - n_max| over methods = "
                 f"{err:.2f} on target `all`, {s['stop_rule_abs_error_union']:.2f} on target `union`.")
        if stop["enabled"]:
            L.append("(With the stop rule on, no k beyond n_max was measured, so a later peak cannot show; "
                     "rerun with `--no-stop` to judge the rule.)")
    fit_by = {r.label: r for r in fits.itertuples()}
    L += ["", f"Scaling law `1 - fitness = L_inf + A / k^b`, fitted per method on the `all` validation fitness; "
          f"predicted saturation = first k where one more expert gains < {cfg.scale.saturation_eps if cfg else 0.005:g}.", "",
          "| method | measured peak k | predicted saturation k | n_max | L_inf | A | b | R^2 |", "|---|---|---|---|---|---|---|---|"]
    for r in pk_all.itertuples():
        f = fit_by.get(r.label)
        if f is None:
            L.append(f"| {r.label} | {r.peak_k} | (fewer than 3 k) | {stop['n_max']} | | | | |")
            continue
        sat = f.predicted_saturation_k if f.predicted_saturation_k > 0 else "never"
        if f.A < 0:
            sat = f"{sat} (fitted fitness falls with k)"
        L.append(f"| {r.label} | {r.peak_k} | {sat} | {stop['n_max']} | {f.L_inf:.3f} | {f.A:.3f} | {f.b:.2f} | {f.r2:.2f} |")
    # --- figures
    L += ["", "## Figures", ""]
    captions = {
        "fitness_vs_k": "Validation fitness vs. number of merged experts; left: all tasks of the pool (every line "
                        "starts at the base model, k=0), right: only the tasks of the k merged experts. Line = mean "
                        "over seeds, band = min..max over seeds, dashed = with RHT, star = the first expert alone, "
                        "red dotted line = the stop rule's n_max.",
        "pca_cumulative": "PCA of the expert task vectors: cumulative explained variance.",
        "principal_angles": "Mean principal angle between the experts' LoRA subspaces (90 = unrelated).",
        "correlation": "Pearson correlation of the task vectors (drives the low-correlation order).",
        "variance_floor": "Theorem 1: merged variance and its drop per added expert against Delta.",
        "merged_weight_hist": "Entries of the uniform merge of the whole pool, without and with RHT.",
    }
    for name, rel in figures.items():
        cap = captions.get(name) or (f"Merged task-vector entries at the largest k run, without and with RHT "
                                     f"({name.removeprefix('weight_hist_')}).")
        L += [f"![{name}]({rel})", "", cap, ""]
    L += ["## Tables", "",
          "`tables/scores.parquet` (one row per k, method, rht, seed, task, split), `tables/fitness.parquet` "
          "(mean per target), `tables/peaks.parquet`, `tables/scaling_fits.parquet`, `tables/theory.parquet`.", ""]
    return "\n".join(L)
