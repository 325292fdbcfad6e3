"""The scale experiment: fitness vs. number of merged experts, and stop rules judged against it.

``run_scale(cfg, run_dir)`` measures each expert alone (its own-task gain orders the pool),
estimates the per-expert variances and correlations, orders the experts, runs every registry
merge to the pool size (so every stop rule can be judged against a measured curve), runs the
searches over a grid of k that the chosen stop rule cuts short, appends one Parquet file per
finished cell, runs the pool analysis and writes the report. Rerunning with the same config
skips finished cells (resume).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from evomerge.config import EvomergeConfig
from evomerge.config.overrides import override
from evomerge.interrupts import caused_by_stop
from evomerge.io import write_json_atomic
from evomerge.pipelines.scale.plan import Cell, StopRule, load_cells
from evomerge.pipelines.scale.planning import expert_gains, make_plan
from evomerge.pipelines.fingerprint import input_fingerprint
from evomerge.pipelines.scale.rundir import check_same_plan, discard_unstarted, prepare_run_dir
from evomerge.pipelines.scale.slots import cpu_only, search_slots
from evomerge.pipelines.scale.store import CellStore
from evomerge.pipelines.scale.work import WHOLE_SPLITS, ScaleContext


@dataclass
class PoolSpec:
    """Where the experts are and which task each serves."""

    paths: list[Path]
    names: list[str]
    tasks: list[str | None]
    base_dir: Path | None
    zoo_root: Path | None
    zoo_profile: str = "default"
    domains: dict[str, str] | None = None  # expert name -> domain (the zoo's), for the correlated pairs
    related: list[tuple[str, str]] | None = None


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
            paths=[s.path for s in specs], names=[s.label for s in specs],
            tasks=[s.task or s.label for s in specs], base_dir=cfg.experts.base, zoo_root=None,
        )
    if zoo is None:
        from evomerge.zoo import ensure_zoo

        zoo = ensure_zoo("default", cfg.zoo_dir, progress=True)
    tasks = list(zoo.tasks)
    try:
        domains, related = zoo.domains, zoo.related_pairs
    except (KeyError, TypeError):  # a zoo that records no domains: no correlated-pair experiment
        domains, related = None, None
    return PoolSpec(
        paths=[zoo.expert_dirs[t] for t in tasks], names=tasks, tasks=tasks, base_dir=zoo.base_dir, zoo_root=zoo.root,
        zoo_profile=zoo.profile, domains=domains, related=related,
    )


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
    overlap: bool = True,
) -> ScaleResult:
    """Run (or resume) the scale experiment into ``run_dir``.

    ``stop`` overrides ``cfg.scale.stop`` (``False`` = the CLI's ``--no-stop``: the searches run
    over the whole k grid; the rules are only recorded).
    ``on_cell_done(cell, n_done_this_call)`` runs after each cell's results are on disk; an
    exception it raises stops the run there (what was written stays: the next call resumes).
    ``overlap``: on a fresh run, start Ray, the pool analysis (in its own process) and the cell
    actors while the driver scores the experts alone and plans; run the merge and pair cells
    beside the searches (CPU plans). Same results; ``False`` runs each step after the other.
    """
    from evomerge.errors import EvomergeError
    from evomerge.io import run_lock

    t0 = time.perf_counter()
    if stop is not None and stop != cfg.scale.stop:
        cfg = override(cfg, {"scale.stop": stop}, "--no-stop")
    run_dir = Path(run_dir)
    spec = pool_spec(cfg, zoo)
    check_inputs(cfg, spec)
    inputs = input_fingerprint(spec, cfg.evaluation.task_files)  # a resume of changed files is refused
    with run_lock(run_dir, "scale"):
        existed = run_dir.is_dir()
        resumed = prepare_run_dir(run_dir, cfg, overwrite, inputs)
        try:
            return _run(cfg, run_dir, spec, resumed, t0, inputs, progress=progress, analyze=analyze, report=report,
                        on_cell_done=on_cell_done, overlap=overlap)
        except EvomergeError:
            if not resumed:  # refused before its first cell: no folder is left behind
                discard_unstarted(run_dir, keep_folder=existed and not overwrite)
            raise


def _run(cfg: EvomergeConfig, run_dir: Path, spec: PoolSpec, resumed: bool, t0: float, inputs: dict, *,
         progress: bool, analyze: bool, report: bool, on_cell_done, overlap: bool) -> ScaleResult:
    """:func:`run_scale` once its folder is ready."""
    from tqdm.auto import tqdm

    ctx = make_context(cfg, spec, run_dir)
    from evomerge.distributed.cluster import connect, disconnect
    from evomerge.pipelines.scale import interrupt as intr
    from evomerge.pipelines.scale.execute import RayCellRunner
    from evomerge.pipelines.scale.finish import Beside, disconnect_beside
    from evomerge.pipelines.scale.start import run_analysis, start_analysis

    started_ray = False
    skipped: set[str] = set()
    n_run = evaluations = 0
    bar = None
    outer = contextlib.ExitStack()
    analysis = early = side = files = None
    ok = False
    before = intr.descendants()  # an interrupt ends the processes this run started, not these
    stopped: dict | None = None  # the run's processes when an interrupt came
    live_slots: list = []  # the open search slots (an interrupt kills their actors)
    interrupted = threading.Event()
    try:
        if overlap and not resumed:
            # a fresh run has cells to run: Ray, the pool analysis (its own process) and the
            # cell actors start while the driver scores the experts alone and plans (none of
            # them reads the plan); the analysis is awaited before the report. It needs no Ray,
            # so it starts first and computes while the driver waits for Ray's start
            if analyze:
                analysis = start_analysis(outer, spec, cfg, run_dir / "analysis")
            started_ray = connect(cfg.ray)
            if cfg.scale.search and cpu_only(cfg):
                early = outer.enter_context(RayCellRunner(ctx, cfg.ray, share=True))
        plan = {**make_plan(cfg, spec, run_dir, ctx), "inputs": inputs}
        import torch

        # the driver's torch work from here on: one thread, as measuring the gains sets it (a
        # resumed run reads them back and would otherwise keep the default)
        torch.set_num_threads(max(1, ctx.threads))
        if resumed:
            check_same_plan(run_dir / "plan.json", plan)
        write_json_atomic(run_dir / "plan.json", plan)
        (run_dir / intr.ZOO_FILE).unlink(missing_ok=True)  # plan.json names the zoo now
        stop_r = StopRule(**plan["stop"])
        if analyze and analysis is None:
            run_analysis(spec, cfg, run_dir / "analysis", progress)
        prepare_statistics(cfg, spec, run_dir, progress)

        store = CellStore(run_dir)
        cells = load_cells(plan)
        if resumed:  # a cell file that cannot be read (a disk fault, a copy cut short): that cell runs again
            for line in store.drop_damaged(store.done() & {c.id for c in cells}):
                print(f"scale: {line}; removed, the cell is computed again", file=sys.stderr, flush=True)
        done = store.done()

        def finished(cell: Cell) -> None:
            nonlocal n_run
            n_run += 1
            if on_cell_done is not None:
                on_cell_done(cell, n_run)

        written = threading.Lock()  # cells are written by the cell runner and (stop target all) the search phase

        def write_cell(cell: Cell, out) -> None:
            nonlocal evaluations
            with written:
                if out.population_test is not None:  # before the cell's file: it marks the cell done
                    from evomerge.pipelines.scale.search_cells import search_dir

                    write_json_atomic(search_dir(run_dir, cell) / "population_test.json", out.population_test)
                store.write(cell.id, out.rows, out.sample, out.examples)
                evaluations += out.evaluations
                bar.update(1)
                bar.set_postfix_str(f"k={cell.k} {cell.method}")
                finished(cell)

        searches = [c for c in cells if c.kind == "search" and c.id not in done]
        score_early = False
        bar = tqdm(total=len(cells), initial=len(done & {c.id for c in cells}), desc="scale cells", unit="cell",
                   disable=not progress)
        if len(done) < len(cells):
            started_ray = connect(cfg.ray) or started_ray  # one Ray for the whole run
        if searches:
            from evomerge.pipelines.scale.search_cells import early_scores, run_searches

            gains = expert_gains(cfg, spec, run_dir, ctx)
            all_search = [c for c in cells if c.kind == "search"]
            enforce = stop_r.enabled and stop_r.rule == "online"
            # stop target all: the rule reads each search's best on every task, so its cell (and
            # the base cell, the tolerance's base) is scored as soon as the search finishes
            score_early = enforce and cfg.scale.stop_target == "all"
            base_cell = next(c for c in cells if c.kind == "base")

            def search_phase() -> set[str] | None:
                # one search per actor slot in flight at once (cells of several k, methods and
                # seeds); the stop rule cuts each method's k grid short
                with search_slots(cfg) as slots, contextlib.ExitStack() as scoring:
                    live_slots.extend(slots)
                    score = scoring.enter_context(early_scores(cfg, ctx, run_dir, write_cell)) if score_early else None
                    cut = run_searches(
                        all_search, cfg, run_dir, names=spec.names, tasks=spec.tasks, all_tasks=plan["tasks"],
                        zoo_root=spec.zoo_root, zoo_profile=spec.zoo_profile, gains=gains,
                        enforce=enforce, slots=slots,
                        on_search=lambda c: bar.set_postfix_str(f"searched k={c.k} {c.method} seed={c.seed}"),
                        should_stop=interrupted.is_set, score=score, base_cell=base_cell,
                    )
                if side is not None:  # now, not after the cells beside: the searches' histograms need not wait
                    side.tell(sorted(expected - (cut or set())))
                return cut
        else:
            skipped = _skipped_searches(run_dir)
        # the merges and correlated pairs do not depend on the searches: with `overlap` they run
        # on cell actors that share the cores with the search slots (CPU plans), then the
        # searches' results are scored on the same actors
        free_all = [c for c in cells if c.id not in done and c.kind != "search"]
        # the base cell belongs to the search phase when it is scored there (stop target all)
        free = [c for c in free_all if not (searches and score_early and c.kind == "base")]
        share = bool(searches) and overlap and cpu_only(cfg)

        def run_cells(runner, todo: list[Cell]) -> None:
            for cell, out in runner.run(todo):
                write_cell(cell, out)

        def searched(job: Beside, cells_beside: list[Cell]) -> set[str]:
            """The search phase's skipped cells, once ``job`` ends (``cells_beside`` run here
            meanwhile). Interrupted: no new search starts and those in flight are cut; another
            error: those in flight finish first."""
            try:
                if cells_beside:
                    run_cells(runner, cells_beside)
                return job.join() or set()
            except BaseException as err:
                interrupted.set()
                if caused_by_stop(err):  # its own error (actors killed) is moot
                    intr.stop_searches(job.thread, live_slots)
                else:
                    job.thread.join()
                raise

        runner = None
        expected = {c.id for c in cells} - skipped  # on disk at the end (the searches' stop may skip more)
        if report and overlap and not expected <= done:
            # the report's second core (report_side): a child that reads the cells' files and
            # draws each method's histogram as soon as its largest-k cells are on disk, then
            # does half of the report beside this process
            from evomerge.pipelines.scale import report_side

            side = report_side.start(run_dir, expected)
            files = report_side.RunFiles(run_dir).follow()
            outer.callback(lambda: None if ok else side.stop())
            outer.callback(files.stop)
        if searches and not share:  # searches first, on every slot; then the cells (the
            # phase runs in a thread: Ctrl-C lands in this one, which then stops it)
            skipped = searched(Beside(search_phase, name="searches", daemon=True), [])
        with contextlib.ExitStack() as stack:
            runner = early
            if share and free and runner is None:
                runner = stack.enter_context(RayCellRunner(ctx, cfg.ray, share=True))
            if share:
                skipped = searched(Beside(search_phase, name="searches", daemon=True), free if runner else [])
                free = []
            now = store.done()  # what the search phase scored (stop target all) is done
            todo = [c for c in free_all if c.id not in now] + [
                c for c in cells if c.kind == "search" and c.id not in now and c.id not in skipped]
            bar.total = len(cells) - len(skipped)
            if side is not None:  # the cells the searches' stop skipped will not come
                expected -= skipped
                side.tell(sorted(expected))
            if todo:
                if runner is None:
                    runner = stack.enter_context(RayCellRunner(ctx, cfg.ray))
                run_cells(runner, todo)
        if analysis is not None:
            analysis.result()  # its error, if any, here
        if side is not None:  # every cell is on disk: the side job does its half of the report
            side.close_input()
        ok = True
    except BaseException as err:  # Ctrl-C or SIGTERM: the side processes end now, not when done
        if not caused_by_stop(err):
            raise
        stopped = intr.started_since(before)
        for job in (analysis, side):
            if job is not None:
                job.stop()
        intr.record_zoo(run_dir, spec.zoo_profile if spec.zoo_root is not None else None)
        raise
    finally:
        if bar is not None:
            bar.close()
        outer.close()  # the early cell actors; waits for the analysis process
        # after a failure Ray is stopped before returning (the caller may resume at once); else
        # it stops in a thread beside the report, which needs no Ray
        stopping = disconnect_beside(started_ray) if ok and report else disconnect(started_ray)
        _record_timing(run_dir, time.perf_counter() - t0, n_run, resumed)
        if stopped:
            intr.end_survivors(stopped)
    seconds = time.perf_counter() - t0
    report_path = None
    try:
        if report:
            from evomerge.pipelines.scale.report import write_report

            report_path = write_report(run_dir, side=side, files=files)
    except BaseException as err:
        if not caused_by_stop(err):
            raise
        stopped = intr.started_since(before)
        if side is not None:
            side.stop()
        if stopping is not None:
            stopping.join()
        intr.end_survivors(stopped)
        raise
    finally:
        if stopping is not None:
            stopping.join()
    total = len(cells) - len(skipped)
    return ScaleResult(
        run_dir=run_dir, stop=stop_r, cells_total=total, cells_run=n_run, cells_skipped=total - n_run,
        evaluations=evaluations, seconds=seconds, report=report_path,
    )


def _skipped_searches(run_dir: Path) -> set[str]:
    import json

    path = run_dir / "search_stop.json"
    return set(json.loads(path.read_text()).get("skipped", [])) if path.is_file() else set()


def check_inputs(cfg: EvomergeConfig, spec: PoolSpec) -> None:
    """Refuse what the run cannot do before any work: your own experts or task files that cannot
    be read or do not fit together (a zoo's files are checked against its manifest), too few
    experts for the rules, Fisher / RegMean without task data for an expert."""
    from evomerge.errors import ConfigError
    from evomerge.merging.registry import get_merge_method
    from evomerge.pipelines.scale.plan import check_pool_for_rules
    from evomerge.pipelines.scale.statistics import needed, train_files

    if spec.zoo_root is None:
        from evomerge.experts import load_pool
        from evomerge.pipelines.inputs import check_user_tasks

        # headers, shapes, the shared base and identical experts (a warning); NaN/inf: the workers, as they load
        load_pool(spec.paths, spec.base_dir, allow_bin=cfg.experts.allow_bin, names=spec.names, check_finite=False)
        # every task file (the workers load them all), their rows as the workers score them
        check_user_tasks(cfg, list(cfg.evaluation.task_files), whole_splits=WHOLE_SPLITS)
    elif cfg.evaluation.tasks:
        unknown = [t for t in cfg.evaluation.tasks if t not in spec.tasks]
        if unknown:
            raise ConfigError(f"`evaluation.tasks`: the zoo {spec.zoo_root} has no task(s) {', '.join(unknown)}; "
                              f"its tasks: {', '.join(spec.tasks)}")
    check_pool_for_rules(cfg.scale, len(spec.names))
    k_end = min(len(spec.names), cfg.scale.k_max or len(spec.names))
    for name in cfg.scale.methods:  # every registry method merges the first k experts, k = k_min .. k_end
        method = get_merge_method(name)
        for k in range(cfg.scale.k_min, k_end + 1):
            try:
                method.check_pool_size(k, cfg.scale.method_params.get(name))
            except ConfigError as err:
                raise ConfigError(f"`scale.methods`: `{name}` cannot merge the first k = {k} experts, which the "
                                  f"run's curve needs for k = {cfg.scale.k_min} .. {k_end} ({err})") from None
    too_big = [k for k in cfg.scale.search_k or () if k > len(spec.names)]
    if too_big:
        raise ConfigError(f"`scale.search_k` asks for k = {too_big}, more experts than the pool's {len(spec.names)}")
    for algo in cfg.scale.search:  # each search starts from its init_merges of the first k experts
        from evomerge.pipelines.scale.plan import search_grid
        from evomerge.search.base import check_init_merges_fit

        for k in search_grid(k_end, cfg.scale.search_k):
            check_init_merges_fit(algo, getattr(cfg, algo).init_merges, k)
    if needed(cfg.scale.methods):
        train_files(spec.names, spec.tasks, spec.zoo_root, cfg.evaluation.task_files)


def prepare_statistics(cfg: EvomergeConfig, spec: PoolSpec, run_dir: Path, progress: bool) -> None:
    """Fisher / RegMean statistics, once per expert on its task's train split (cached in the run)."""
    from evomerge.pipelines.scale import statistics as st

    needs = st.needed(cfg.scale.methods)
    if not needs:
        return
    from evomerge.experts import load_pool

    files = st.train_files(spec.names, spec.tasks, spec.zoo_root, cfg.evaluation.task_files)
    pool = load_pool(spec.paths, spec.base_dir, allow_bin=cfg.experts.allow_bin, names=spec.names)
    st.ensure(run_dir, pool, spec.names, files, needs, cfg.scale.stats_samples, progress)


def make_context(cfg: EvomergeConfig, spec: PoolSpec, run_dir: Path) -> ScaleContext:
    """What every cell worker needs (small, picklable)."""
    return ScaleContext(
        expert_paths=tuple(str(p) for p in spec.paths), names=tuple(spec.names), expert_tasks=tuple(spec.tasks),
        base_dir=str(spec.base_dir) if spec.base_dir else None, zoo_root=str(spec.zoo_root) if spec.zoo_root else None,
        evaluation=cfg.evaluation, rht=cfg.rht, method_params=cfg.scale.method_params, device=cfg.device,
        hist_samples=cfg.scale.hist_samples, allow_bin=cfg.experts.allow_bin, run_dir=str(Path(run_dir).resolve()),
        population_test=cfg.scale.population_test,
    )


def _record_timing(run_dir: Path, seconds: float, cells: int, resumed: bool) -> None:
    import json

    path = run_dir / "timing.json"
    sessions = json.loads(path.read_text()) if path.is_file() else []
    sessions.append({"seconds": round(seconds, 2), "cells": cells, "resumed": resumed, "finished": time.time()})
    write_json_atomic(path, sessions)
