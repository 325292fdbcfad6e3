"""Fisher / RegMean statistics for a scale run: computed once per expert on its task's train
split, cached beside the run (``run_dir/stats/<expert>.safetensors``), stacked per cell.

The task data are looked up before any work, so an expert without train data is
refused with its name (``train_files``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import torch

from evomerge.errors import ConfigError

STATS_DIR = "stats"


def needed(methods: Iterable[str]) -> list[str]:
    """The statistics (``fisher``, ``gram``) the registry methods read."""
    from evomerge.merging.registry import get_merge_method

    return sorted({s for m in methods for s in get_merge_method(m).needs})


def train_files(names: Sequence[str], tasks: Sequence[str | None], zoo_root: str | Path | None,
                task_files: dict[str, str | Path] | None) -> list[Path]:
    """Each expert's train split: the zoo's ``tasks/<task>/train.parquet``, or the ``train`` file
    (one of :data:`~evomerge.evaluation.task_data.TASK_EXTENSIONS`; two are refused) in the expert
    task's folder of ``evaluation.task_files``."""
    from evomerge.evaluation.task_data import find_split

    out = []
    for name, task in zip(names, tasks):
        found = None
        if task is not None and zoo_root is not None:
            p = Path(zoo_root) / "tasks" / task / "train.parquet"
            found = p if p.is_file() else None
        elif task is not None and task_files and task in task_files and Path(task_files[task]).is_dir():
            found = find_split(Path(task_files[task]), "train", where=f"evaluation.task_files.{task}: ")
        if found is None:
            raise ConfigError(f"scale: Fisher/RegMean need task data for expert `{name}` (task {task!r}): "
                              "no train split found (zoo tasks/<task>/train.parquet or evaluation.task_files/<task>/train.*)")
        out.append(found)
    return out


def _path(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / STATS_DIR / f"{name}.safetensors"


def ensure(run_dir: Path, pool, names: Sequence[str], files: Sequence[Path], needs: Sequence[str], n: int,
           progress: bool = False) -> None:
    """Compute and cache the statistics of every expert that has none on disk yet."""
    from safetensors.torch import save

    from evomerge.experts.statistics import fisher_diagonals, gram_matrices, load_model_and_tokenizer
    from evomerge.evaluation.task_data import load_examples
    from evomerge.io import atomic_file

    todo = [i for i, name in enumerate(names) if not _path(run_dir, name).is_file()]
    if not todo:
        return
    pool.require_base("Fisher / RegMean statistics")
    model, tok = load_model_and_tokenizer(pool.base_path)
    keys = pool.keys()
    for i in todo:
        examples = load_examples(files[i], limit=n)
        tv = pool.task_vector(i)
        flat: dict[str, torch.Tensor] = {}
        if "fisher" in needs:
            flat.update({f"fisher::{k}": v.contiguous() for k, v in fisher_diagonals(model, tv, examples, tok, n, keys).items()})
        if "gram" in needs:
            flat.update({f"gram::{k}": v.contiguous() for k, v in gram_matrices(model, tv, examples, tok, n, keys).items()})
        path = _path(run_dir, names[i])
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path, "wb") as fh:
            fh.write(save(flat))


def load_stacked(run_dir: str | Path, names: Sequence[str], subset: Sequence[int]) -> dict[str, dict[str, torch.Tensor]]:
    """``{key: {"fisher": [k, *shape], "gram": [k, in, in]}}`` for the experts of ``subset``."""
    from safetensors.torch import load_file

    per = [load_file(str(_path(Path(run_dir), names[i]))) for i in subset]
    out: dict[str, dict[str, torch.Tensor]] = {}
    for full in per[0]:
        stat, key = full.split("::", 1)
        out.setdefault(key, {})[stat] = torch.stack([p[full] for p in per])
    return out
