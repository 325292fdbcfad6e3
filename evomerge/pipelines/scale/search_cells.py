"""GENOME / Model Swarms cells of a scale run.

Each search cell runs ``evomerge.pipelines.evolve.run.run_evolve`` on the cell's k experts (objective: the
validation fitness on those experts' tasks, RHT off) into ``run_dir/search/<cell>/``; that
run resumes by itself if the scale run is interrupted. The best result is then scored, plain
and with RHT, by the same cell workers as the registry merges (:meth:`CellWorker.run`).
"""

from __future__ import annotations

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


def run_searches(cells: list[Cell], cfg: EvomergeConfig, run_dir: Path, *, names, tasks, all_tasks, zoo_root,
                 zoo_profile, gains: dict, enforce: bool, slots: list, on_search=None,
                 should_stop=None) -> set[str] | None:
    """Run the search cells with one search in flight per slot (an open Runtime of its own
    actors), every method's k grid ascending. A method's next k is queued once all seeds of its
    current k are done; with ``enforce`` (the online rule) a method's remaining k are skipped
    once the rule fires on its curve so far (fitness = the search's own validation fitness).
    Each search is seeded per cell and a decision sees its points sorted by (k, seed), so the
    results do not depend on which slot ran what, or when. Returns the ids of the skipped cells
    (``search_stop.json``); ``should_stop()`` true: no new search starts, those in flight
    finish, nothing is recorded and None is returned (the run was interrupted elsewhere)."""
    from collections import deque
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from evomerge.io import write_json_atomic

    if not slots:
        raise ValueError("run_searches needs at least one slot")
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

    def enqueue(method: str) -> None:
        k = grids[method][step[method]]
        batch = sorted((c for c in by_method[method] if c.k == k), key=lambda c: c.seed)
        left[method] = len(batch)
        queue.extend(batch)

    def k_done(method: str) -> None:
        k_min = grids[method][0]
        mcells = sorted((c for c in by_method[method] if c.k <= grids[method][step[method]]), key=lambda c: (c.k, c.seed))
        if enforce:
            points = [(c.k, fitness[c.id]) for c in mcells if c.id in fitness]
            first = next(c for c in mcells if c.k == k_min)
            base = base_union(gains, tasks, first.experts[:k_min])
            decisions[method] = {**online_decision(points, base, cfg.scale), "ks_run": sorted({k for k, _ in points})}
        step[method] += 1
        if step[method] >= len(grids[method]):
            return
        if decisions.get(method, {}).get("fired"):
            skipped.update(c.id for c in by_method[method] if c.k >= grids[method][step[method]])
            return
        enqueue(method)

    for method in by_method:
        enqueue(method)
    free = list(slots)
    running: dict = {}
    most = 0  # the most searches in flight at once (search_stop.json)
    with ThreadPoolExecutor(max_workers=len(slots), thread_name_prefix="search") as pool:
        try:
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
                most = max(most, len(running))
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in sorted(done, key=lambda f: running[f][0].id):
                    cell, slot = running.pop(fut)
                    free.append(slot)
                    fut.result()  # a failed search stops the run (the others finish first)
                    f = search_fitness(run_dir, cell)
                    if f is not None:
                        fitness[cell.id] = f
                    if on_search is not None:
                        on_search(cell)
                    left[cell.method] -= 1
                    if left[cell.method] == 0:
                        k_done(cell.method)
        finally:
            queue.clear()
    write_json_atomic(Path(run_dir) / STOP_FILE, {"enforced": enforce, "methods": decisions, "skipped": sorted(skipped),
                                                  "slots": len(slots), "most_in_flight": most})
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


def search_scores(run_dir: Path, cells: list[Cell], test: dict[str, float] | None = None) -> list[dict]:
    """Per finished search cell: its validation fitness, the test score of the validation-selected
    best, and (when recorded) the best test score over its final population (test-set selection).

    ``test``: cell id -> the scale run's own test fitness of the cell's best (its k experts'
    tasks, every test row, as the final population is scored); without it, the search run's
    own end-of-run test score."""
    import json

    test = test or {}
    rows = []
    for cell in cells:
        d = search_dir(run_dir, cell)
        if cell.kind != "search" or not (d / "result.json").is_file():
            continue
        res = json.loads((d / "result.json").read_text())
        pop = json.loads((d / "population_test.json").read_text()) if (d / "population_test.json").is_file() else None
        rows.append({"k": cell.k, "method": cell.method, "seed": cell.seed, "validation": res.get("best_fitness"),
                     "test_val_selected": test.get(cell.id, res.get("best_test_fitness")),
                     "test_best_in_population": max(pop.values()) if pop else None})
    return rows
