"""GENOME / Model Swarms cells of a scale run.

Each search cell runs ``evomerge.pipelines.evolve.run.run_evolve`` on the cell's k experts (objective: the
validation fitness on those experts' tasks, RHT off) into ``run_dir/search/<cell>/``; that
run resumes by itself if the scale run is interrupted. The best result is then scored, plain
and with RHT, by the same cell workers as the registry merges (:meth:`CellWorker.run`).
"""

from __future__ import annotations

from pathlib import Path

from evomerge.config import EvomergeConfig, config_from_dict
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
    data = cfg.model_dump(mode="json")
    data["seed"] = cell.seed
    data["rht"] = {**data["rht"], "enabled": False}  # RHT variants are scored afterwards
    if zoo_root is not None:
        data["zoo_dir"] = str(zoo_root)
    return config_from_dict(data, f"scale search cell {cell.id}")


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
    from evomerge.theory.online_rule import gain_scale, online_stop

    ks = sorted({k for k, _ in points})
    if len(ks) < 3:
        return {"fired": False, "k": ks[-1] if ks else None}
    first = [f for k, f in points if k == ks[0]]
    tol = cfg.online_tol * gain_scale(sum(first) / len(first), base)
    fire = online_stop([k for k, _ in points], [-f for _, f in points], tol=tol, window=cfg.online_window)
    return {"fired": fire.fired, "k": fire.fired_k, "tol": tol}


def run_searches(cells: list[Cell], cfg: EvomergeConfig, run_dir: Path, *, names, tasks, all_tasks, zoo_root,
                 zoo_profile, gains: dict, enforce: bool, runtime, on_search=None) -> set[str]:
    """Run the search cells k by k (ascending) on one runtime. With ``enforce`` (the online rule),
    a method's remaining k are skipped once the rule fires on its curve so far (fitness = the
    search's own validation fitness); returns the ids of the skipped cells (``search_stop.json``)."""
    from evomerge.io import write_json_atomic

    skipped: set[str] = set()
    decisions: dict[str, dict] = {}
    by_method: dict[str, list[Cell]] = {}
    for c in cells:
        by_method.setdefault(c.method, []).append(c)
    for method, mcells in by_method.items():
        points: list[tuple[int, float]] = []
        base = None
        for k in sorted({c.k for c in mcells}):
            if decisions.get(method, {}).get("fired"):
                skipped |= {c.id for c in mcells if c.k == k}
                continue
            for cell in (c for c in mcells if c.k == k):
                run_search(cell, cfg, run_dir, names=names, tasks=tasks, all_tasks=all_tasks, zoo_root=zoo_root,
                           zoo_profile=zoo_profile, progress=False, runtime=runtime)
                f = search_fitness(run_dir, cell)
                if f is not None:
                    points.append((k, f))
                if base is None:
                    base = base_union(gains, tasks, cell.experts[:min(c.k for c in mcells)])
                if on_search is not None:
                    on_search(cell)
            if enforce:
                decisions[method] = {**online_decision(points, base, cfg.scale), "ks_run": sorted({k for k, _ in points})}
    write_json_atomic(Path(run_dir) / STOP_FILE, {"enforced": enforce, "methods": decisions, "skipped": sorted(skipped)})
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


def search_scores(run_dir: Path, cells: list[Cell]) -> list[dict]:
    """Per finished search cell: its validation fitness, the test score of the validation-selected
    best, and (when recorded) the best test score over its final population (test-set selection)."""
    import json

    rows = []
    for cell in cells:
        d = search_dir(run_dir, cell)
        if cell.kind != "search" or not (d / "result.json").is_file():
            continue
        res = json.loads((d / "result.json").read_text())
        pop = json.loads((d / "population_test.json").read_text()) if (d / "population_test.json").is_file() else None
        rows.append({"k": cell.k, "method": cell.method, "seed": cell.seed, "validation": res.get("best_fitness"),
                     "test_val_selected": res.get("best_test_fitness"),
                     "test_best_in_population": max(pop.values()) if pop else None})
    return rows
