"""The scale report: merged Parquet tables, figures, the stop rules judged, and ``report.md``.

``write_report(run_dir)`` needs only what the run left on disk (``plan.json``, ``cells/``,
``samples/``, ``analysis/``), so ``evomerge report RUN_DIR`` regenerates it at any time,
including for a run that was interrupted. Every file it reads is read through a checked reader
(:func:`~evomerge.pipelines.scale.store.read_json_file`,
:func:`~evomerge.pipelines.scale.store.read_parquet_file`, :class:`CellStore` for the cells'
files) before any work: one that cannot be read is refused by name.

A cell of the plan without its file that the stop rule did not skip (``search_stop.json``) is
*missing*: the run was interrupted, or a file was lost. The report names those cells in its
header (and ``report.json``'s ``cells_missing``) and leaves the curves they belong to out of the
peaks, the rule table and the fits: such a curve lacks a k on some seed (or on all), so its
measured peak would be another curve's. ``evomerge scale --out RUN --resume`` computes them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from evomerge.errors import ConfigError, DataError
from evomerge.io import atomic_file, jsonable, write_json_atomic, write_parquet_atomic
from evomerge.pipelines.scale.noise import LEVEL, REPLICATES, SEED, compare_to_reference, noise_tables, reference_method
from evomerge.pipelines.scale.report_md import ANALYSIS_FIGURES
from evomerge.pipelines.scale.store import CellStore, read_json_file
from evomerge.pipelines.scale.tables import fitness_table, peaks

NOISE_SCHEMA = pa.schema([("method", pa.string()), ("rht", pa.bool_()), ("target", pa.string()), ("split", pa.string()),
                          ("k", pa.int64()), ("value", pa.float64()), ("low", pa.float64()), ("high", pa.float64()),
                          ("p_best", pa.float64()), ("within_noise", pa.bool_())])


def load_run(run_dir: str | Path, *, samples: bool = True, files=None,
             plan: dict[str, Any] | None = None) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame | None]:
    """(plan, per-task scores, weight samples) of a run directory (``samples=False``: None for them;
    ``files``: a :class:`~evomerge.pipelines.scale.report_side.RunFiles` that has read files ahead;
    ``plan``: the run's plan when already read)."""
    run_dir = Path(run_dir)
    plan = plan if plan is not None else load_plan(run_dir)
    # only the plan's cells are read: an unreadable file of an older plan's cell does not matter
    scores = (files or CellStore(run_dir)).scores(_plan_cells(plan)).to_pandas()
    if scores.empty:
        raise DataError(f"{run_dir / 'cells'}: no finished cells of the run's plan (`evomerge scale --out {run_dir} "
                        "--resume` computes them)")
    return plan, scores, load_samples(run_dir, plan) if samples else None


#: The keys of ``plan.json`` the report reads.
PLAN_KEYS = ("cells", "stop", "experts", "orders")


def load_plan(run_dir: Path, keys: tuple[str, ...] = ("cells",)) -> dict[str, Any]:
    """``plan.json`` of a run (:class:`~evomerge.pipelines.scale.store.DamagedRunFile` when it
    cannot be read or lacks one of ``keys``)."""
    plan_path = run_dir / "plan.json"
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such folder (the scale run's --out)" if not run_dir.exists()
                          else f"{run_dir}: not a folder (the scale run's --out)")
    if not plan_path.is_file():
        raise ConfigError(f"{run_dir}: not a scale run directory (plan.json missing)")
    return read_json_file(plan_path, "the run's plan, written when it started: the report cannot be built without "
                          "it (restore the file from a copy of the run, or run `evomerge scale` again into another --out)",
                          keys=keys)


#: The way on for each file the report reads besides the cells' and the searches' (``{run}``:
#: the run folder; a search's: :data:`~evomerge.pipelines.scale.search_cells.SEARCH_REMEDY`).
REMEDY = {
    "expert_gains.json": "remove it: `evomerge scale --out {run} --resume` scores the experts alone again",
    "search_stop.json": "remove it: `evomerge scale --out {run} --resume` writes it again (the finished searches "
                        "are reused)",
    "timing.json": "remove it: it holds only the run's wall times, which the report then leaves out",
    "analysis": "remove `{run}/analysis`: `evomerge scale --out {run} --resume` runs the pool analysis again",
}


def read_run_files(run_dir: Path, plan: dict[str, Any]) -> dict[str, Any]:
    """Every JSON and Parquet file of the run the report reads besides the cells' files, read
    and checked before any work (:class:`~evomerge.pipelines.scale.store.DamagedRunFile` names
    one that cannot be read): ``gains``, ``search_stop``, ``timing``, ``analysis`` (summary.json)
    (each None when the file is absent) and ``search_files`` (the searches' result, population
    test and history, :func:`~evomerge.pipelines.scale.search_cells.read_search_files`)."""
    from evomerge.pipelines.scale.plan import load_cells
    from evomerge.pipelines.scale.search_cells import read_search_files

    def read(path: Path, remedy: str, kind: type = dict) -> Any:
        return read_json_file(path, remedy.format(run=run_dir), kind=kind) if path.is_file() else None

    return {"gains": read(run_dir / "expert_gains.json", REMEDY["expert_gains.json"]),
            "search_stop": read(run_dir / "search_stop.json", REMEDY["search_stop.json"]),
            "timing": read(run_dir / "timing.json", REMEDY["timing.json"], list),
            "analysis": read(run_dir / "analysis" / "summary.json", REMEDY["analysis"]),
            "search_files": read_search_files(run_dir, load_cells(plan))}


def missing_cells(run_dir: Path, plan: dict[str, Any], search_stop: dict | None) -> list:
    """The plan's cells without their file in ``cells/`` that the stop rule did not skip
    (``search_stop.json``'s ``skipped``): a run interrupted, or a file lost."""
    from evomerge.pipelines.scale.plan import load_cells

    done = CellStore(run_dir).done()
    skipped = set((search_stop or {}).get("skipped") or [])
    return [c for c in load_cells(plan) if c.id not in done and c.id not in skipped]


def left_out_curves(missing: list, plan: dict[str, Any]) -> dict[tuple[str, bool], list[str]]:
    """``(method, rht)`` -> the missing cells of that curve: a merge cell is on its variant's
    curve, a search cell on both of its variants'; without the base cell every curve is left
    out (each rule's tolerance is measured from the base model)."""
    from evomerge.pipelines.scale.plan import load_cells

    out: dict[tuple[str, bool], list[str]] = {}
    base = [c.id for c in missing if c.kind == "base"]
    curves = sorted({(c.method, rht) for c in load_cells(plan) if c.kind in ("merge", "search")
                     for rht in ((False, True) if c.kind == "search" and c.rht else (c.rht,))})
    for c in missing:
        if c.kind == "merge":
            out.setdefault((c.method, c.rht), []).append(c.id)
        elif c.kind == "search":
            for rht in (False, True) if c.rht else (False,):
                out.setdefault((c.method, rht), []).append(c.id)
    if base:
        out = {key: base + out.get(key, []) for key in curves}
    return out


def _on_curves(frame: pd.DataFrame, curves) -> Any:
    """Which rows of ``frame`` belong to the curves ``curves`` ((method, rht) keys)."""
    return pd.MultiIndex.from_arrays([frame["method"].astype(str), frame["rht"].astype(bool)]).isin(list(curves))


def _without_curves(fitness: pd.DataFrame, curves) -> pd.DataFrame:
    """``fitness`` without the rows of the merge and search curves ``curves`` ((method, rht) keys)."""
    if not curves:
        return fitness
    return fitness[~(_on_curves(fitness, curves) & fitness["kind"].isin(["merge", "search"]).to_numpy())]


def load_samples(run_dir: Path, plan: dict[str, Any]) -> pd.DataFrame:
    """The weight samples of the plan's cells."""
    return CellStore(run_dir).samples(_plan_cells(plan)).to_pandas()


def _plan_cells(plan: dict[str, Any]) -> set[str]:
    # only the current plan's cells: a run continued with other `stop`/`k_max` keeps older files
    from evomerge.pipelines.scale.plan import load_cells

    return {c.id for c in load_cells(plan)}


def _fmt(x: float, nd: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{nd}f}"


def write_report(run_dir: str | Path, overrides: dict[str, Any] | None = None, *, side=None, files=None) -> Path:
    """Write ``tables/*.parquet``, ``figures/*.png``, ``report.json`` and ``report.md``
    (``overrides``: dotted keys laid over the run's config for judging, from ``--set``: only
    :attr:`~evomerge.config.sections.ScaleConfig.REPORT_KEYS`, :func:`check_report_sets` refuses the others;
    ``side``: the run's :func:`~evomerge.pipelines.scale.report_side.start` job, told that every
    cell is on disk, which draws the figures and computes the validation split's noise meanwhile;
    ``files``: a :class:`~evomerge.pipelines.scale.report_side.RunFiles` that read files ahead)."""
    try:
        return _write_report(run_dir, overrides, side, files)
    except BaseException:
        if side is not None:  # (Ctrl-C, or an error here): the child's work is moot
            side.stop()
        raise
    finally:
        if side is not None:
            side.wait()


def check_report_sets(values: dict[str, Any]) -> None:
    """Refuse the ``--set`` keys the report cannot change (one line per key): only
    :attr:`~evomerge.config.sections.ScaleConfig.REPORT_KEYS` change how it judges the cells; every
    other key describes the cells already run, and the report would describe a run that was not made."""
    from evomerge.config.sections import ScaleConfig

    allowed = sorted(f"scale.{k}" for k in ScaleConfig.REPORT_KEYS)
    lines = []
    for key in values:
        section, _, name = key.partition(".")
        if key in allowed:
            continue
        if section == "scale" and name.split(".")[0] not in ScaleConfig.model_fields:
            why = "unknown key"
        else:
            why = "describes the cells already run, not how they are judged (run `evomerge scale` into another --out)"
        lines.append(f"--set {key}: {why}; `evomerge report` can change only how the cells are judged: "
                     + ", ".join(allowed))
    if lines:
        raise ConfigError("\n".join(lines))


def _write_report(run_dir: str | Path, overrides: dict[str, Any] | None, side, files) -> Path:
    from evomerge.config import load_config
    from evomerge.pipelines.scale.rules import cut_searches, judge, pair_summary

    if overrides:
        check_report_sets(overrides)  # before any work
    run_dir = Path(run_dir)
    plan = load_plan(run_dir, PLAN_KEYS)
    cfg = load_config(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else None
    if cfg is None:
        raise ConfigError(f"{run_dir}: config.yaml missing (not a scale run directory)")
    run_cfg = cfg
    if overrides:
        from evomerge.config.overrides import override

        cfg = override(cfg, overrides, "--set")
    inputs = read_run_files(run_dir, plan)  # every other file, checked before any work
    metric = cfg.evaluation.metric
    stop = plan["stop"]
    if cfg.scale.law_first_k >= stop["k_end"]:
        # fitted on every k the run measured, the law would predict nothing (`scale` refuses such
        # a config; a run made before it did is reported with a smaller law_first_k)
        source = (f"--set scale.law_first_k={cfg.scale.law_first_k}" if overrides and "scale.law_first_k" in overrides
                  else f"{run_dir / 'config.yaml'}: `scale.law_first_k` = {cfg.scale.law_first_k}")
        hint = (f"report it with --set scale.law_first_k={stop['k_end'] - 1}" if stop["k_end"] > 3
                else "the law needs 3 points and a k beyond them")
        raise ConfigError(f"{source}: the law must be fitted on fewer k than the run measured ({stop['k_end']}) "
                          f"to predict the rest ({hint})")
    _, scores, samples = load_run(run_dir, samples=side is None, files=files, plan=plan)  # (the side job reads samples itself)
    tables, figs = run_dir / "tables", run_dir / "figures"
    gains = inputs["gains"]
    analysis_summary = inputs["analysis"] or {}
    pca = analysis_summary.get("pca_components")
    analysis_missing = _analysis_missing(run_dir, inputs["analysis"], pca)
    missing = missing_cells(run_dir, plan, inputs["search_stop"])
    left_out = left_out_curves(missing, plan)

    fitness = fitness_table(scores)
    judged_fitness = _without_curves(fitness, left_out)  # a curve with a missing cell has no measured peak
    pk_all, pk_union = peaks(judged_fitness, target="all"), peaks(judged_fitness, target="union")
    examples = split_examples(run_dir, scores, files)
    if side is None:
        noise = noise_tables(scores, examples, fitness)
    else:  # the side job computes its splits' noise meanwhile
        from evomerge.pipelines.scale.report_side import SIDE_SPLITS

        mine = ~scores["split"].isin(SIDE_SPLITS)
        noise = noise_tables(scores[mine], None if examples is None else examples[~examples["split"].isin(SIDE_SPLITS)],
                             fitness)
    reference = reference_method(pk_all, list(cfg.scale.methods))
    from evomerge.pipelines.scale.plan import search_grid

    cut = cut_searches(inputs["search_stop"], stop,
                       search_grid(int(stop["k_end"]), cfg.scale.search_k), list(cfg.scale.search))
    from evomerge.pipelines.scale.law_noise import law_step_ses  # the law's noise tolerance (analytic, k <= m only)

    law_ses = law_step_ses(scores, examples, cfg.scale.law_first_k)
    records, fits = (judge(plan, judged_fitness, scale_cfg=cfg.scale, pca_count=pca, gains=gains, cut=cut,
                           law_ses=law_ses, pca_missing=analysis_missing)
                     if not judged_fitness.empty else ([], []))
    pairs = pair_summary(fitness, plan, gains) if not fitness.empty else []
    from evomerge.pipelines.scale.plan import load_cells
    from evomerge.pipelines.scale.search_cells import search_scores

    searches = search_scores(run_dir, load_cells(plan), _search_tests(fitness), inputs["search_files"])
    margin_kept(searches, inputs["search_files"]["histories"], cfg)
    side_out = side.result() if side is not None else None
    if side_out is not None:
        noise = merge_noise([noise, side_out["noise"]])
    _no_choices(noise, left_out)
    comparisons = compare_to_reference(noise, pk_all, reference)
    write_parquet_atomic(tables / "scores.parquet", pa.Table.from_pandas(scores, preserve_index=False))
    write_parquet_atomic(tables / "fitness.parquet", pa.Table.from_pandas(fitness, preserve_index=False))
    write_parquet_atomic(tables / "theory.parquet", pa.Table.from_pylist(stop["curve"]))
    write_parquet_atomic(tables / "peaks.parquet", pa.Table.from_pandas(
        pd.concat([pk_all.assign(target="all"), pk_union.assign(target="union")], ignore_index=True), preserve_index=False))
    write_parquet_atomic(tables / "rules.parquet", pa.Table.from_pylist(records) if records else pa.table({}))
    write_parquet_atomic(tables / "scaling_fits.parquet", pa.Table.from_pylist(fits) if fits else pa.table({}))
    write_parquet_atomic(tables / "noise.parquet", pa.Table.from_pandas(noise.table, NOISE_SCHEMA, preserve_index=False))

    from evomerge.pipelines.scale.report_figures import fitness_figure, weight_histograms

    if side_out is None:
        figures = fitness_figure(plan, fitness, figs, metric, noise.table, incomplete=left_out)
        figures.update(weight_histograms(samples, figs))
    else:
        figures = {**side_out["fitness_figure"], **side_out["histograms"]}
    analysis = run_dir / "analysis"
    for name in ANALYSIS_FIGURES:
        if (analysis / f"{name}.png").is_file():
            figures[name] = f"analysis/{name}.png"

    summary = _summary(plan, fitness, pk_all, pk_union, records, fits, pairs, pca, figures, inputs)
    summary["searches"] = searches
    summary["cells_missing"] = [c.id for c in missing]
    summary["curves_left_out"] = [{"method": f"{m}+rht" if rht else m, "missing": ids}
                                  for (m, rht), ids in sorted(left_out.items())]
    summary["analysis_missing"] = analysis_missing
    summary["principal_angle_random_deg"] = analysis_summary.get("principal_angle_random_deg")  # (the figure's level)
    summary["report_overrides"] = {k: _scale_value(cfg, k) for k in sorted(overrides or {})}
    summary["run_settings"] = {k: _scale_value(run_cfg, k) for k in sorted(overrides or {})}
    summary.update(_noise_summary(noise, reference, comparisons))
    from evomerge.pipelines.scale.report_md import markdown
    from evomerge.pipelines.scale.report_verdicts import rule_verdicts

    summary["verdicts"] = rule_verdicts(summary["rules"], f"law_k<={cfg.scale.law_first_k}")
    write_json_atomic(run_dir / "report.json", jsonable(summary))
    md = markdown(plan, cfg, summary, pk_all, pk_union, figures, run_dir)
    path = run_dir / "report.md"
    with atomic_file(path, "w") as fh:
        fh.write(md)
    return path


def split_examples(run_dir: Path, scores: pd.DataFrame, files=None) -> pd.DataFrame | None:
    """The per-example rows of the run's curve cells (None for a run directory without them)."""
    ids = scores.loc[scores["kind"] != "pair", "cell"].unique()
    table = (files or CellStore(run_dir)).examples(ids)
    return table.to_pandas() if table.num_rows else None


def merge_noise(parts: list) -> Any:
    """One :class:`~evomerge.pipelines.scale.noise.Noise` from parts computed on disjoint splits
    (each split's bootstrap is its own): what ``noise_tables`` gives for all of them at once."""
    from evomerge.pipelines.scale.noise import COLUMNS, Noise, empty_table

    tables = [p.table for p in parts if not p.table.empty]
    out = Noise(pd.concat(tables, ignore_index=True)[COLUMNS].sort_values(
        ["target", "split", "method", "rht", "k"], ignore_index=True) if tables else empty_table())
    for split in sorted({s for p in parts for s in p.reps}):  # noise_tables' order: splits sorted
        part = next(p for p in parts if split in p.reps)
        out.reps[split], out.keys[split], out.rows[split] = part.reps[split], part.keys[split], part.rows[split]
    return out


def _noise_summary(noise, reference: str | None, comparisons: list[dict]) -> dict[str, Any]:
    """report.json's evaluation noise: every point (``noise``, the rows of tables/noise.parquet),
    the paired test comparisons with the reference merge and how they were computed."""
    return {
        "noise": noise.table.to_dict(orient="records"),
        "noise_comparisons": comparisons,
        "noise_settings": {"available": noise.available, "replicates": REPLICATES, "level": LEVEL, "seed": SEED,
                           "reference": reference, "rows": noise.rows},
    }


def _search_tests(fitness: pd.DataFrame) -> dict[str, float]:
    """Search cell id -> the test fitness (its experts' tasks, no RHT) of the search's best."""
    if fitness.empty:
        return {}
    f = fitness[(fitness["kind"] == "search") & (fitness["split"] == "test") & (fitness["target"] == "union")
                & ~fitness["rht"].astype(bool)]
    return {str(c): float(v) for c, v in f.groupby("cell")["fitness"].mean().items()}


def _base_all(fitness: pd.DataFrame, split: str) -> float:
    b = fitness[(fitness["method"] == "base") & (fitness["target"] == "all") & (fitness["split"] == split)]
    return float(b["fitness"].mean()) if not b.empty else float("nan")


def _scale_value(cfg, key: str) -> Any:
    """The value of a dotted ``--set`` key (``scale.NAME``: the report's keys) in ``cfg``."""
    section, _, name = key.partition(".")
    return getattr(getattr(cfg, section), name)


def _analysis_missing(run_dir: Path, summary: dict | None, pca: Any) -> str | None:
    """Why the run has no pool analysis to report (None: it has one)."""
    if not (run_dir / "analysis").is_dir():
        return "`analysis/` not found in the run"
    if summary is None:
        return "`analysis/summary.json` not found in the run"
    if pca is None:
        return "`analysis/summary.json` has no `pca_components`"
    return None


def margin_kept(searches: list[dict], histories: dict[str, pd.DataFrame], cfg) -> None:
    """Add to each search row (:func:`~evomerge.pipelines.scale.search_cells.search_scores`) the
    run's ``select_margin`` of its method and, from its history, the best validation fitness the
    search scored (``top_id``, ``top_fitness``, ``top_generation``) and ``kept_by_margin``: the
    search returned an individual of its initial population although a later one scored higher,
    by no more than the margin (a search returns its best initial individual unless a later one
    beats it by more than ``select_margin``; None where the history is not known)."""
    for r in searches:
        section = getattr(cfg, str(r["method"]), None)
        r["select_margin"] = float(section.select_margin) if hasattr(section, "select_margin") else None
        h = histories.get(r["cell"])
        r.update(top_id=None, top_fitness=None, top_generation=None, kept_by_margin=None)
        if h is None or h.empty or r.get("validation") is None or h["fitness"].isna().all():
            continue
        top = h.loc[h["fitness"].idxmax()]  # (the first of equals: the earliest scored)
        r.update(top_id=str(top["id"]), top_fitness=float(top["fitness"]), top_generation=int(top["generation"]))
        if r.get("best_generation") is not None:
            above = float(top["fitness"]) - float(r["validation"])
            margin = r["select_margin"] if r["select_margin"] is not None else float("inf")
            r["kept_by_margin"] = bool(r["best_generation"] == 0 and 0 < above <= margin + 1e-12)


def _no_choices(noise, curves) -> None:
    """No ``p_best`` / ``within_noise`` on the curves left out (a missing cell: their best k is not measured)."""
    if not curves or noise.table.empty:
        return
    t = noise.table
    off = _on_curves(t, curves)
    t.loc[off, "p_best"] = float("nan")
    t.loc[off, "within_noise"] = None


def _summary(plan, fitness, pk_all, pk_union, records, fits, pairs, pca, figures, inputs) -> dict[str, Any]:
    stop = plan["stop"]
    ks = sorted(int(k) for k in fitness["k"].unique()) if not fitness.empty else []
    timing = inputs["timing"] or []
    return {
        "n_experts": len(plan["experts"]),
        "sigma2": stop["sigma2"], "rho": stop["rho"], "delta": stop["delta"], "delta_mode": stop["delta_mode"],
        "n_max": stop["n_max"], "stop_enabled": stop["enabled"], "stop_rule": stop["rule"], "k_end": stop["k_end"],
        "search_k": stop["search_k"], "search_stop": inputs["search_stop"],
        "k_measured_max": max(ks) if ks else 0,
        "cells_done": int(fitness["cell"].nunique()) if not fitness.empty else 0,
        "cells_planned": len(plan["cells"]),
        "base_fitness_all": {"validation": _base_all(fitness, "validation"), "test": _base_all(fitness, "test")},
        "pca_components_95": pca,
        "orders": plan["orders"],
        "gains": dict(zip(plan["experts"], plan.get("gains") or [])),
        "peaks_all": pk_all.to_dict(orient="records"),
        "peaks_union": pk_union.to_dict(orient="records"),
        "rules": [{k: r[k] for k in ("rule", "method", "target", "fired_k", "peak_k", "error")} for r in records],
        "rules_detail": records,
        "scaling_fits": fits,
        "pairs": pairs,
        "wall_seconds": sum(s["seconds"] for s in timing),
        "cpu_seconds": sum(s.get("cpu_seconds", 0.0) for s in timing),
        "figures": figures,
        "zoo_profile": plan.get("zoo_profile"),
    }
