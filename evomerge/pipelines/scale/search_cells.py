"""GENOME / Model Swarms cells of a scale run.

Each search cell runs ``evomerge.pipelines.evolve.run.run_evolve`` on the cell's k experts (objective: the
validation fitness on those experts' tasks, RHT off) into ``run_dir/search/<cell>/``; that
run resumes by itself if the scale run is interrupted. The best result is then scored, plain
and with RHT, by the same cell workers as the registry merges (:meth:`CellWorker.run`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from evomerge.config import EvomergeConfig
from evomerge.config.overrides import override
from evomerge.pipelines.scale.plan import Cell


def search_dir(run_dir: Path, cell: Cell) -> Path:
    return Path(run_dir) / "search" / cell.id


def best_path(run_dir: Path, cell: Cell) -> Path | None:
    """The search's best result (peft adapter or task-vector folder), once the search finished."""
    d = search_dir(run_dir, cell)
    if not (d / "result.json").is_file():
        return None
    for name in ("best_adapter", "best_task_vector"):
        if (d / name).is_dir():
            return d / name
    return None


def search_config(cfg: EvomergeConfig, cell: Cell, zoo_root: Path | None) -> EvomergeConfig:
    values: dict = {"seed": cell.seed, "rht.enabled": False}  # RHT variants are scored afterwards
    if zoo_root is not None:
        values["zoo_dir"] = str(zoo_root)
    return override(cfg, values, f"scale search cell {cell.id}")


def run_search(cell: Cell, cfg: EvomergeConfig, run_dir: Path, *, names: list[str], tasks: list[str | None],
               all_tasks: list[str], zoo_root: Path | None, zoo_profile: str, progress: bool = False,
               runtime=None) -> Path:
    """Run (or resume, or reuse) the search of one cell; return its best result's folder.

    ``runtime``: an open :class:`~evomerge.distributed.runtime.Runtime` whose actors every
    search cell reuses (starting actors costs far more than a small search)."""
    from evomerge.pipelines.evolve.run import run_evolve

    done = best_path(run_dir, cell)
    if done is not None:
        return done
    out = search_dir(run_dir, cell)
    subset_tasks = [t for t in dict.fromkeys(tasks[i] for i in cell.experts) if t in all_tasks]
    run_evolve(
        search_config(cfg, cell, zoo_root), cell.method, out,
        resume=(out / "run.json").is_file(), experts=[names[i] for i in cell.experts],
        tasks=subset_tasks or None, progress=progress, zoo_profile=zoo_profile, runtime=runtime,
        svd_adapter=False,  # the cell is scored on the exact result
        report_test=False,  # (as is its test score, on every row: the search's own would repeat it)
    )
    found = best_path(run_dir, cell)
    if found is None:
        from evomerge.errors import EvomergeError

        raise EvomergeError(f"{out}: the search finished without writing its best result")
    return found


STOP_FILE = "search_stop.json"


def search_fitness(run_dir: Path, cell: Cell) -> float | None:
    """The search's best validation fitness on its k experts' tasks (``result.json``)."""
    import json

    path = search_dir(run_dir, cell) / "result.json"
    if not path.is_file():
        return None
    value = json.loads(path.read_text()).get("best_fitness")
    return None if value is None else float(value)


def base_union(gains: dict, tasks: list[str | None], experts: tuple[int, ...]) -> float:
    """The base model's validation score averaged over the tasks of ``experts``."""
    import math

    vals = [gains["base"][t] for t in dict.fromkeys(tasks[i] for i in experts) if t in gains.get("base", {})]
    return sum(vals) / len(vals) if vals else math.nan


def online_decision(points: list[tuple[int, float]], base: float, cfg) -> dict:
    """The online rule on a search's curve so far (``(k, fitness)`` per seed)."""
    from evomerge.theory.online_rule import online_stop, online_tolerance

    ks = sorted({k for k, _ in points})
    if len(ks) < 2:
        return {"fired": False, "k": ks[-1] if ks else None}
    first = [f for k, f in points if k == ks[0]]
    tol = online_tolerance(cfg.online_tol, first, base)
    fire = online_stop([k for k, _ in points], [-f for _, f in points], tol=tol, window=cfg.online_window)
    return {"fired": fire.fired, "k": fire.fired_k, "tol": tol}


def cell_value(run_dir: Path, cell_id: str) -> float | None:
    """A scored cell's validation fitness on every task of the run, RHT off: the value the
    report's ``all`` target shows for it (the cell's Parquet file through the report's own
    :func:`~evomerge.pipelines.scale.tables.fitness_table`; mean over the seeds it stands for)."""
    from evomerge.pipelines.scale.store import CellStore
    from evomerge.pipelines.scale.tables import fitness_table

    rows = CellStore(run_dir).scores([cell_id])
    if rows.num_rows == 0:
        return None
    f = fitness_table(rows.to_pandas())
    f = f[(f["split"] == "validation") & (f["target"] == "all") & ~f["rht"].astype(bool)]
    return float(f["fitness"].mean()) if not f.empty else None


@contextlib.contextmanager
def early_scores(cfg: EvomergeConfig, ctx, run_dir: Path, write_cell):
    """``score(cell) -> cell_value`` for the search phase (stop target all): the cell is scored by
    one cell actor of its own (the same :class:`~evomerge.pipelines.scale.work.CellWorker` work
    as every cell, so its rows are the ones the report reads) and written by ``write_cell(cell,
    output)``; a cell already on disk (a resumed run) is only read. The actor reserves no CPU,
    so it shares the cores with the search slots; on a GPU plan it runs on the CPU, since the
    slots hold the GPUs."""
    import dataclasses

    from evomerge.pipelines.scale.execute import RayCellRunner
    from evomerge.pipelines.scale.slots import cpu_only
    from evomerge.pipelines.scale.store import CellStore

    gpu = not cpu_only(cfg)
    one = override(cfg, {"ray.num_actors": 1, **({"ray.gpus_per_actor": 0} if gpu else {})}, "the search phase's scorer")
    store = CellStore(run_dir)
    with RayCellRunner(dataclasses.replace(ctx, device="cpu") if gpu else ctx, one.ray, share=True) as runner:
        def score(cell: Cell) -> float | None:
            if not (store.cells_dir / f"{cell.id}.parquet").is_file():
                for done, out in runner.run([cell]):
                    write_cell(done, out)
            return cell_value(run_dir, cell.id)

        yield score


def run_searches(cells: list[Cell], cfg: EvomergeConfig, run_dir: Path, *, names, tasks, all_tasks, zoo_root,
                 zoo_profile, gains: dict, enforce: bool, slots: list, on_search=None,
                 should_stop=None, score=None, base_cell: Cell | None = None) -> set[str] | None:
    """Run the search cells with one search in flight per slot (an open Runtime of its own
    actors), every method's k grid ascending. A method's next k is queued once all seeds of its
    current k are done; with ``enforce`` (the online rule) a method's remaining k are skipped
    once the rule fires on its curve so far.

    The curve (``scale.stop_target``): ``own``, each search's own best validation fitness (its k
    experts' tasks); ``all``, its best individual's validation fitness on every task of the run
    (the report's ``all`` target), from the search cell scored by ``score(cell)`` (which writes
    the cell's file and returns :func:`cell_value`) as soon as the search finishes, with the
    base model's value (``score(base_cell)``) as the tolerance's base. Scores run one at a time
    in a thread of their own, so the slots go on searching meanwhile.
    Each search is seeded per cell and a decision sees its points sorted by (k, seed), so the
    results do not depend on which slot ran what, or when. Returns the ids of the skipped cells
    (``search_stop.json``); ``should_stop()`` true: no new search starts, those in flight
    finish, nothing is recorded and None is returned (the run was interrupted elsewhere)."""
    from collections import deque
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from evomerge.io import write_json_atomic

    if not slots:
        raise ValueError("run_searches needs at least one slot")
    target = cfg.scale.stop_target if enforce else "own"
    if target == "all" and (score is None or base_cell is None):
        raise ValueError("run_searches: stop_target all needs score and base_cell")
    by_method: dict[str, list[Cell]] = {}
    for c in cells:
        by_method.setdefault(c.method, []).append(c)
    grids = {m: sorted({c.k for c in mc}) for m, mc in by_method.items()}
    step = {m: 0 for m in by_method}  # index into grids[m] of the k in flight
    left: dict[str, int] = {}
    fitness: dict[str, float] = {}
    skipped: set[str] = set()
    decisions: dict[str, dict] = {}
    queue: deque[Cell] = deque()
    base_all: list[float] = []  # the base model's all-task value, once scored (target all)

    def enqueue(method: str) -> None:
        k = grids[method][step[method]]
        batch = sorted((c for c in by_method[method] if c.k == k), key=lambda c: c.seed)
        left[method] = len(batch)
        queue.extend(batch)

    def k_done(method: str) -> None:
        k_min = grids[method][0]
        mcells = sorted((c for c in by_method[method] if c.k <= grids[method][step[method]]), key=lambda c: (c.k, c.seed))
        if enforce:
            read = [c for c in mcells if c.id in fitness]
            points = [(c.k, fitness[c.id]) for c in read]
            if target == "all":
                base = base_all[0]
            else:
                first = next(c for c in mcells if c.k == k_min)
                base = base_union(gains, tasks, first.experts[:k_min])
            decisions[method] = {**online_decision(points, base, cfg.scale), "ks_run": sorted({k for k, _ in points}),
                                 "base": base, "points": [[c.k, c.seed, fitness[c.id]] for c in read]}
        step[method] += 1
        if step[method] >= len(grids[method]):
            return
        if decisions.get(method, {}).get("fired"):
            skipped.update(c.id for c in by_method[method] if c.k >= grids[method][step[method]])
            return
        enqueue(method)

    def counted(cell: Cell) -> None:
        left[cell.method] -= 1
        if left[cell.method] == 0:
            k_done(cell.method)

    for method in by_method:
        enqueue(method)
    free = list(slots)
    running: dict = {}  # future -> (cell, slot); slot None: the cell's score
    most = 0  # the most searches in flight at once (search_stop.json)
    with ThreadPoolExecutor(max_workers=len(slots), thread_name_prefix="search") as pool, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="search-score") as scorer:
        try:
            if target == "all":
                running[scorer.submit(score, base_cell)] = (base_cell, None)
            while queue or running:
                if should_stop is not None and should_stop():
                    queue.clear()
                    if not running:
                        return None
                while free and queue:
                    cell, slot = queue.popleft(), free.pop(0)
                    fut = pool.submit(run_search, cell, cfg, run_dir, names=names, tasks=tasks, all_tasks=all_tasks,
                                      zoo_root=zoo_root, zoo_profile=zoo_profile, progress=False, runtime=slot)
                    running[fut] = (cell, slot)
                most = max(most, sum(slot is not None for _, slot in running.values()))
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in sorted(done, key=lambda f: (running[f][1] is None, running[f][0].id)):
                    cell, slot = running.pop(fut)
                    if slot is None:  # a score (target all)
                        value = fut.result()
                        if value is None:
                            from evomerge.errors import EvomergeError

                            raise EvomergeError(f"scale cell {cell.id}: scored without a validation value on all tasks")
                        if cell.kind == "base":
                            base_all.append(value)
                        else:
                            fitness[cell.id] = value
                            counted(cell)
                        continue
                    free.append(slot)
                    fut.result()  # a failed search stops the run (the others finish first)
                    if on_search is not None:
                        on_search(cell)
                    if target == "all":
                        running[scorer.submit(score, cell)] = (cell, None)
                        continue
                    f = search_fitness(run_dir, cell)
                    if f is not None:
                        fitness[cell.id] = f
                    counted(cell)
        finally:
            queue.clear()
    write_json_atomic(Path(run_dir) / STOP_FILE, {"enforced": enforce, "stop_target": cfg.scale.stop_target, "methods": decisions,
                                                  "skipped": sorted(skipped), "slots": len(slots), "most_in_flight": most})
    return skipped


def final_population(run_dir: Path, cell: Cell) -> dict[str, dict]:
    """The individuals (GENOME) or particles (Model Swarms) of the search's last checkpoint, as
    candidates the evaluator scores (LoRA modules in the ``ab`` space, task vectors otherwise)."""
    import json

    from safetensors.torch import load_file

    from evomerge.experts.types import ab_to_lora

    ckpt = search_dir(run_dir, cell) / "checkpoints"
    latest = ckpt / (ckpt / "LATEST").read_text().strip()
    state = json.loads((latest / "state.json").read_text())
    ids = [m["id"] for s in state["searches"] for m in s.get("individuals", s.get("particles", []))]
    tensors = load_file(str(latest / "population.safetensors"))
    out: dict[str, dict] = {}
    for ident in ids:
        td = {k.split("|", 1)[1]: v for k, v in tensors.items() if k.split("|", 1)[0] == ident}
        out[ident] = ab_to_lora(td) if any(k.endswith("::A") for k in td) else td
    return out


#: The way on for a search's file that cannot be read (``{run}``: the run folder, ``{cell}``: its id).
SEARCH_REMEDY = ("remove `{run}/search/{cell}` and `{run}/cells/{cell}.parquet`: `evomerge scale --out {run} --resume` "
                 "runs that search again")
#: The columns of a search's ``history.parquet`` the report reads.
HISTORY_COLUMNS = ["id", "op", "generation", "fitness"]


def read_search_files(run_dir: Path, cells: list[Cell]) -> dict[str, dict]:
    """Each finished search cell's files, read and checked
    (:class:`~evomerge.pipelines.scale.store.DamagedRunFile` names one that cannot be read):
    ``results`` (cell id -> ``result.json``), ``population_tests`` (-> ``population_test.json``)
    and ``histories`` (-> ``history.parquet``'s :data:`HISTORY_COLUMNS`, a DataFrame), each
    holding the cells whose file exists."""
    from evomerge.pipelines.scale.store import read_json_file, read_parquet_file

    out: dict[str, dict] = {"results": {}, "population_tests": {}, "histories": {}}
    for cell in cells:
        d = search_dir(run_dir, cell)
        if cell.kind != "search" or not d.is_dir():
            continue
        remedy = SEARCH_REMEDY.format(run=run_dir, cell=cell.id)
        for key, name in (("results", "result.json"), ("population_tests", "population_test.json")):
            if (d / name).is_file():
                out[key][cell.id] = read_json_file(d / name, remedy)
        if (d / "history.parquet").is_file():
            out["histories"][cell.id] = read_parquet_file(d / "history.parquet", remedy, HISTORY_COLUMNS).to_pandas()
    return out


def search_scores(run_dir: Path, cells: list[Cell], test: dict[str, float] | None = None,
                  files: dict[str, dict] | None = None) -> list[dict]:
    """Per finished search cell: its validation fitness, the test score of the validation-selected
    best, and (when recorded) the best test score over its final population (test-set selection).

    ``test``: cell id -> the scale run's own test fitness of the cell's best (its k experts'
    tasks, every test row, as the final population is scored); without it, the search run's
    own end-of-run test score. ``best_op`` / ``best_generation``: the operation that made the
    best individual and its generation (``history.parquet``): generation 0 is the initial
    population (the experts, the scaled sums, the registry merges), so they say whether the
    search's own steps beat its starting points. ``files``: what :func:`read_search_files` read
    of the run (read here when not given)."""
    test = test or {}
    files = files if files is not None else read_search_files(run_dir, cells)
    rows = []
    for cell in cells:
        res = files["results"].get(cell.id)
        if cell.kind != "search" or res is None:
            continue
        pop = files["population_tests"].get(cell.id)
        best_op, best_gen = None, None
        h = files["histories"].get(cell.id)
        if h is not None and res.get("best_id") is not None:
            row = h[h["id"] == res["best_id"]]
            if not row.empty:
                best_op, best_gen = row["op"].iloc[0], int(row["generation"].iloc[0])
        rows.append({"cell": cell.id, "k": cell.k, "method": cell.method, "seed": cell.seed,
                     "validation": res.get("best_fitness"),
                     "test_val_selected": test.get(cell.id, res.get("best_test_fitness")),
                     "test_best_in_population": max(pop.values()) if pop else None,
                     "best_op": best_op, "best_generation": best_gen})
    return rows
