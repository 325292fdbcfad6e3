"""GENOME / Model Swarms cells of a scale run.

Each search cell runs ``evomerge.evolve.run_evolve`` on the cell's k experts (objective: the
validation fitness on those experts' tasks, RHT off) into ``run_dir/search/<cell>/``; that
run resumes by itself if the scale run is interrupted. The best result is then scored, plain
and with RHT, by the same cell workers as the registry merges (:meth:`CellWorker.run`).
"""

from __future__ import annotations

from pathlib import Path

from evomerge.config import EvomergeConfig, config_from_dict
from evomerge.scale.plan import Cell


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
    from evomerge.evolve import run_evolve

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
