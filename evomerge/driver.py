"""The scale experiment: fitness vs. number of merged experts, with the variance-drop stop rule.

``run_scale(cfg, run_dir)`` estimates sigma^2 and rho from the pool, orders the experts,
decides the last k (Theorem 1's n_max when stopping), runs every (k, method, seed, rht) cell as
Ray work, appends one Parquet file per finished cell, runs the pool analysis and writes the
report. Rerunning with the same config skips finished cells (resume).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from evomerge.config import EvomergeConfig, config_from_dict, dump_config
from evomerge.errors import ConfigError, OutputExistsError
from evomerge.io import write_json_atomic
from evomerge.scale.plan import Cell, StopRule, build_cells, load_cells, stop_rule
from evomerge.scale.store import CellStore
from evomerge.scale.work import ScaleContext

FAIL_AFTER_ENV = "EVOMERGE_SCALE_FAIL_AFTER"  # testing aid: abort after N finished cells


class InjectedFailure(RuntimeError):
    """Raised on purpose (``EVOMERGE_SCALE_FAIL_AFTER``) to test resume."""


@dataclass
class PoolSpec:
    """Where the experts are and which task each serves."""

    paths: list[Path]
    names: list[str]
    tasks: list[str | None]
    base_dir: Path | None
    zoo_root: Path | None
    zoo_profile: str = "default"


@dataclass
class ScaleResult:
    run_dir: Path
    stop: StopRule
    cells_total: int
    cells_run: int
    cells_skipped: int
    evaluations: int
    seconds: float
    report: Path | None


def pool_spec(cfg: EvomergeConfig, zoo=None) -> PoolSpec:
    """The experts of the config, or (none given) those of ``zoo`` / the default built-in zoo."""
    if cfg.experts.experts:
        specs = cfg.experts.experts
        return PoolSpec(
            paths=[s.path for s in specs], names=[s.name or s.path.name for s in specs],
            tasks=[s.task or s.name or s.path.name for s in specs], base_dir=cfg.experts.base, zoo_root=None,
        )
    if zoo is None:
        from evomerge.zoo import ensure_zoo

        zoo = ensure_zoo("default", cfg.zoo_dir, progress=True)
    tasks = list(zoo.tasks)
    return PoolSpec(
        paths=[zoo.expert_dirs[t] for t in tasks], names=tasks, tasks=tasks, base_dir=zoo.base_dir, zoo_root=zoo.root,
        zoo_profile=zoo.profile,
    )


# Keys that only change how far a run goes: a run may be continued with other values (e.g.
# `--no-stop` on a run that stopped at n_max computes just the extra k).
EXTENDABLE = ("stop", "k_max")


def _comparable(cfg: EvomergeConfig) -> dict[str, Any]:
    data = cfg.model_dump(mode="json", exclude={"ray"})  # where it runs does not change results
    for key in EXTENDABLE:
        data["scale"].pop(key)
    return data


def prepare_run_dir(run_dir: Path, cfg: EvomergeConfig, overwrite: bool) -> bool:
    """Create or reopen ``run_dir``; True when it holds an earlier run of the same config."""
    saved = run_dir / "config.yaml"
    if run_dir.exists() and overwrite:
        shutil.rmtree(run_dir)
    elif saved.is_file():
        from evomerge.config import load_config

        old = load_config(saved)
        if _comparable(old) != _comparable(cfg):
            diff = sorted(_diff_keys(_comparable(old), _comparable(cfg)))
            raise OutputExistsError(
                f"{run_dir}: holds a scale run with a different config (differs in: {', '.join(diff[:8])}); "
                "pass --overwrite to replace it, or use another --out"
            )
        dump_config(cfg, saved)  # it may extend the earlier run (EXTENDABLE keys)
        return True
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise OutputExistsError(f"{run_dir}: exists and is not a scale run; pass --overwrite to replace it")
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, saved)
    return False


def _diff_keys(a: Any, b: Any, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for k in set(a) | set(b):
            out |= _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}


def _check_same_plan(path: Path, plan: dict[str, Any]) -> None:
    import json

    if not path.is_file():
        return
    old = json.loads(path.read_text())
    for key in ("experts", "orders"):
        if old.get(key) != plan[key]:
            raise OutputExistsError(
                f"{path.parent}: the earlier run used a different pool or plan (`{key}` differs: e.g. another zoo); "
                "pass --overwrite to replace it, or use another --out"
            )


def _fail_after_from_env() -> int | None:
    raw = os.environ.get(FAIL_AFTER_ENV)
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{FAIL_AFTER_ENV} must be an integer, got {raw!r}") from None


def run_scale(
    cfg: EvomergeConfig,
    run_dir: str | Path,
    *,
    zoo=None,
    stop: bool | None = None,
    overwrite: bool = False,
    progress: bool = True,
    analyze: bool = True,
    report: bool = True,
    on_cell_done: Callable[[Cell, int], None] | None = None,
) -> ScaleResult:
    """Run (or resume) the scale experiment into ``run_dir``.

    ``stop`` overrides ``cfg.scale.stop`` (``False`` = the CLI's ``--no-stop``).
    ``on_cell_done(cell, n_done_this_call)`` runs after each cell's results are on disk.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    if stop is not None and stop != cfg.scale.stop:
        cfg = config_from_dict({**cfg.model_dump(mode="json"), "scale": {**cfg.scale.model_dump(mode="json"), "stop": stop}})
    run_dir = Path(run_dir)
    spec = pool_spec(cfg, zoo)
    resumed = prepare_run_dir(run_dir, cfg, overwrite)
    plan = make_plan(cfg, spec)
    if resumed:
        _check_same_plan(run_dir / "plan.json", plan)
    write_json_atomic(run_dir / "plan.json", plan)
    stop_r = StopRule(**plan["stop"])
    if analyze:
        run_analysis(spec, cfg, run_dir / "analysis", progress)

    store = CellStore(run_dir)
    cells = load_cells(plan)
    done = store.done()
    todo = [c for c in cells if c.id not in done]
    fail_after = _fail_after_from_env()
    n_run = evaluations = 0

    def finished(cell: Cell) -> None:
        nonlocal n_run
        n_run += 1
        if on_cell_done is not None:
            on_cell_done(cell, n_run)
        if fail_after is not None and n_run >= fail_after:
            raise InjectedFailure(f"{FAIL_AFTER_ENV}={fail_after}: stopping after {n_run} cells")

    ctx = make_context(cfg, spec, run_dir)
    searches = [c for c in todo if c.kind == "search"]
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc="scale cells", unit="cell", disable=not progress)
    from evomerge.distributed.cluster import connect, disconnect

    started_ray = connect(cfg.ray) if todo else False  # one Ray for the whole run
    try:
        # 1. the searches, all on one set of population actors (released before the cell
        #    actors below are placed)
        if searches:
            from evomerge.distributed.runtime import Runtime
            from evomerge.scale.search_cells import run_search

            with Runtime(cfg) as rt:
                for cell in searches:
                    bar.set_postfix_str(f"searching k={cell.k} {cell.method} seed={cell.seed}")
                    run_search(cell, cfg, run_dir, names=spec.names, tasks=spec.tasks, all_tasks=plan["tasks"],
                               zoo_root=spec.zoo_root, zoo_profile=spec.zoo_profile, progress=False, runtime=rt)
        # 2. every cell (merges, and scoring the searches' results) on one set of actors
        if todo:
            from evomerge.scale.execute import RayCellRunner

            with RayCellRunner(ctx, cfg.ray) as runner:
                for cell, out in runner.run(todo):
                    store.write(cell.id, out.rows, out.sample)
                    evaluations += out.evaluations
                    bar.update(1)
                    bar.set_postfix_str(f"k={cell.k} {cell.method}")
                    finished(cell)
    finally:
        bar.close()
        disconnect(started_ray)
        _record_timing(run_dir, time.perf_counter() - t0, n_run, resumed)
    seconds = time.perf_counter() - t0
    report_path = None
    if report:
        from evomerge.report import write_report

        report_path = write_report(run_dir)
    return ScaleResult(
        run_dir=run_dir, stop=stop_r, cells_total=len(cells), cells_run=n_run, cells_skipped=len(cells) - len(todo),
        evaluations=evaluations, seconds=seconds, report=report_path,
    )


def make_context(cfg: EvomergeConfig, spec: PoolSpec, run_dir: Path) -> ScaleContext:
    """What every cell worker needs (small, picklable)."""
    return ScaleContext(
        expert_paths=tuple(str(p) for p in spec.paths), names=tuple(spec.names), expert_tasks=tuple(spec.tasks),
        base_dir=str(spec.base_dir) if spec.base_dir else None, zoo_root=str(spec.zoo_root) if spec.zoo_root else None,
        evaluation=cfg.evaluation, rht=cfg.rht, method_params=cfg.scale.method_params, device=cfg.device,
        hist_samples=cfg.scale.hist_samples, allow_bin=cfg.experts.allow_bin, run_dir=str(Path(run_dir).resolve()),
    )


def make_plan(cfg: EvomergeConfig, spec: PoolSpec) -> dict[str, Any]:
    """sigma^2, rho and the correlation matrix of the pool, the expert orders, the stop rule
    and every cell, as JSON-able data (``plan.json``)."""
    from evomerge.experts import load_pool
    from evomerge.merging.registry import get_merge_method
    from evomerge.scale.ordering import order_experts
    from evomerge.theory import estimate_sigma_rho

    pool = load_pool(spec.paths, spec.base_dir, allow_bin=cfg.experts.allow_bin, names=spec.names)
    sigma2, rho, corr = estimate_sigma_rho(pool.stacked(k) for k in pool.keys())
    n = len(pool)
    s = cfg.scale
    orders = {seed: order_experts(n, s.order, seed=seed, corr=corr) for seed in s.seeds}
    rule = stop_rule(sigma2, rho, n, s)
    random_methods = frozenset(m for m in s.methods if get_merge_method(m).random)
    cells = build_cells(s, orders, rule.k_end, random_methods=random_methods, order_random=s.order == "random")
    eval_tasks = list(cfg.evaluation.tasks or (spec.names if spec.zoo_root is not None else cfg.evaluation.task_files))
    return {
        "experts": spec.names,
        "expert_tasks": spec.tasks,
        "tasks": eval_tasks,
        "zoo_profile": spec.zoo_profile if spec.zoo_root is not None else None,
        "kind": pool.kind,
        "correlation": corr.tolist(),
        "orders": {str(seed): [spec.names[i] for i in o] for seed, o in orders.items()},
        "stop": rule.to_dict(),
        "cells": [
            {"kind": c.kind, "k": c.k, "method": c.method, "rht": c.rht, "seed": c.seed,
             "seeds": list(c.seeds), "experts": list(c.experts)}
            for c in cells
        ],
    }


def run_analysis(spec: PoolSpec, cfg: EvomergeConfig, out_dir: Path, progress: bool = False) -> None:
    """The pool analysis (PCA, principal angles, correlation, ...) once per run directory."""
    if (out_dir / "summary.json").is_file():
        return
    from evomerge.analysis import analyze_pool
    from evomerge.experts import load_pool

    pool = load_pool(spec.paths, spec.base_dir, allow_bin=cfg.experts.allow_bin, names=spec.names)
    analyze_pool(pool, out_dir, names=spec.names, delta=cfg.scale.delta, rht_cfg=cfg.rht, seed=cfg.seed,
                 overwrite=True, progress=progress)


def _record_timing(run_dir: Path, seconds: float, cells: int, resumed: bool) -> None:
    import json

    path = run_dir / "timing.json"
    sessions = json.loads(path.read_text()) if path.is_file() else []
    sessions.append({"seconds": round(seconds, 2), "cells": cells, "resumed": resumed, "finished": time.time()})
    write_json_atomic(path, sessions)
