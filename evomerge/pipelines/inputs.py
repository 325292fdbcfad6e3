"""What an evolutionary run starts from: the experts (as numpy dicts the actors share through
the object store), the task names, and a picklable recipe for building the evaluator inside
each actor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from evomerge.config import EvomergeConfig
from evomerge.distributed.actors import td_to_numpy
from evomerge.errors import ConfigError
from evomerge.evaluation.evaluator import REPORTED_SPLITS

NumpyDict = dict[str, np.ndarray]


@dataclass(frozen=True)
class EvaluatorSpec:
    """Builds the evaluator where it runs (an actor): only paths and settings travel."""

    base_dir: Path
    zoo_root: Path | None
    tasks: tuple[str, ...]
    task_files: dict[str, Path] = field(default_factory=dict)
    metric: str = "token_accuracy"
    max_samples: int = 200
    batch_size: int = 64
    rows_per_pass: int | None = None
    task_weights: dict[str, float] | None = None
    #: scored on every row (the rest keep ``max_samples``, the search's budget): the reported splits
    whole_splits: tuple[str, ...] = REPORTED_SPLITS

    def __call__(self, device: str) -> Any:
        from evomerge.evaluation.evaluator import Evaluator

        common = dict(metric=self.metric, device=device, batch_size=self.batch_size,
                      max_samples=self.max_samples, max_rows=self.rows_per_pass, whole_splits=self.whole_splits)
        if self.task_weights is not None:
            common["task_weights"] = self.task_weights
        if self.zoo_root is not None:
            from evomerge.zoo.zoo import Zoo

            return Evaluator.from_zoo(Zoo.open(self.zoo_root), tasks=list(self.tasks), **common)
        return Evaluator(self.base_dir, load_user_tasks(self.task_files, self.tasks), **common)


#: The splits a run reads of a user's task: validation (every choice; required), test (reported when present).
TASK_SPLITS = ("validation", "test")


def load_user_tasks(task_files: Mapping[str, str | Path], tasks: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """``evaluation.task_files`` (all, or those of ``tasks``): a folder per task holding
    ``validation`` and ``test`` files, or one file used for validation. The one task loader reads
    and checks them; its errors name the key (``evaluation.task_files.<task>``) and the file."""
    from evomerge.evaluation.task_data import load_task

    names = list(task_files) if tasks is None else list(tasks)
    return {t: load_task(task_files[t], TASK_SPLITS, source=f"evaluation.task_files.{t}") for t in names}


def check_user_tasks(cfg: EvomergeConfig, tasks: Sequence[str] | None = None, whole_splits: Sequence[str] = ()) -> None:
    """With your own experts, before any work (evolve: before Ray starts; scale: before its run
    folder): ``evaluation.task_files`` is given, has the task of every expert that names one (an
    expert without ``task`` is not checked: scale reads it as serving the task of its name when a
    task file has that name, evolve as serving none), and the files of ``tasks`` (default: those the run
    evaluates) load, with the loader the evaluators use, and encode with the base's tokenizer
    (the rows the evaluators score: ``evaluation.max_samples`` per split, every row of
    ``whole_splits``; characters outside its vocabulary, rows longer than its context). The
    built-in zoo needs none of this."""
    if not cfg.experts.experts:
        return
    ev = cfg.evaluation
    if not ev.task_files:
        raise ConfigError("`evaluation.task_files`: a run over your own experts needs its tasks (name -> file or folder)")
    for i, s in enumerate(cfg.experts.experts):
        if s.task is not None and s.task not in ev.task_files:
            # (it would be scored, ordered and searched without its own task: a gain of n/a)
            raise ConfigError(f"`experts.experts[{i}]` ({s.label}): its task `{s.task}` has no "
                              f"`evaluation.task_files.{s.task}` (the task files: {', '.join(ev.task_files)}); "
                              "give that task's file or folder")
    data = load_user_tasks(ev.task_files, chosen_tasks(list(ev.task_files), ev.tasks, tasks))
    if cfg.experts.base is not None:  # (no base: refused by the caller, naming experts.base)
        from evomerge.evaluation.encoding import check_task_encoding

        check_task_encoding(cfg.experts.base, data, ev.max_samples, whole_splits)


def chosen_tasks(all_tasks: list[str], configured: Sequence[str] | None, given: Sequence[str] | None) -> list[str]:
    """The tasks a run evaluates: ``given`` (the caller's), else ``evaluation.tasks``, else all."""
    chosen = list(given) if given is not None else list(configured or all_tasks)
    unknown = [t for t in chosen if t not in all_tasks]
    if unknown:
        raise ConfigError(f"`evaluation.tasks`: unknown task(s) {unknown}; available: {', '.join(all_tasks)}")
    if not chosen:
        raise ConfigError("`evaluation.tasks`: no tasks to evaluate on (give evaluation.task_files)")
    return chosen


@dataclass(frozen=True)
class EvolveInputs:
    names: list[str]
    experts: dict[str, NumpyDict]  # expert_id(i) -> ab-dict (LoRA) or task vector (full)
    kind: str  # "lora" (A/B factors) | "delta" (LoRA product deltas) | "full" (task vectors)
    fan_in_fan_out: dict[str, bool]  # LoRA pools (either space): each adapted weight's stored layout
    adapter_template: dict[str, Any]  # LoRA pools: the first chosen expert's adapter config
    tasks: list[str]
    evaluator: EvaluatorSpec
    # LoRA pools: per adapted weight, the sum of the chosen experts' ranks (the rank of any
    # linear combination of their deltas; the rank of a dense result written as an adapter)
    lora_ranks: dict[str, int] = field(default_factory=dict)


def select(names: Sequence[str], wanted: Sequence[str | int] | None) -> list[int]:
    """Indices of ``wanted`` (names or 0-based indices) in ``names``; all when None."""
    if wanted is None:
        return list(range(len(names)))
    out = []
    for w in wanted:
        if isinstance(w, int) and not isinstance(w, bool):
            if not 0 <= w < len(names):
                raise ConfigError(f"`experts`: index {w} is out of range for a pool of {len(names)}")
            out.append(w)
        elif w in names:
            out.append(list(names).index(w))
        else:
            raise ConfigError(f"`experts`: no expert named {w!r}; the pool has {', '.join(names)}")
    if len(set(out)) != len(out):
        raise ConfigError(f"`experts`: an expert is listed twice in {list(wanted)}")
    if len(out) < 2:
        raise ConfigError(f"`experts`: evolutionary merging needs at least 2 experts. Got {len(out)} instead.")
    return out


def prepare_inputs(
    cfg: EvomergeConfig,
    *,
    experts: Sequence[str | int] | None = None,
    tasks: Sequence[str] | None = None,
    zoo_profile: str = "small",
    space: str = "ab",
) -> EvolveInputs:
    """Load the pool (the built-in zoo when the config names no experts) and pick experts/tasks.

    ``space`` (LoRA pools): "ab" gives each expert as its A/B factors, "delta" as its dense
    product delta, so that search operators act on exact task vectors (``kind`` "delta")."""
    from evomerge.experts.pool import load_pool
    from evomerge.search import expert_id

    ev = cfg.evaluation
    if cfg.experts.experts:
        specs = cfg.experts.experts
        pool = load_pool([s.path for s in specs], base=cfg.experts.base, allow_bin=cfg.experts.allow_bin,
                         names=[s.name for s in specs])
        if cfg.experts.base is None:
            raise ConfigError("`experts.base`: evolutionary search evaluates merges, so it needs the base model")
        all_tasks = list(ev.task_files)
        zoo_root, base_dir = None, Path(cfg.experts.base)
    else:
        from evomerge.zoo.zoo import ensure_zoo

        zoo = ensure_zoo(zoo_profile, root=cfg.zoo_dir)
        pool = load_pool([zoo.expert_dirs[t] for t in zoo.tasks], base=zoo.base_dir, names=zoo.tasks)
        all_tasks = list(zoo.tasks)
        zoo_root, base_dir = zoo.root, zoo.base_dir
    idx = select(pool.names, experts)
    chosen = chosen_tasks(all_tasks, ev.tasks, tasks)
    from evomerge.experts.types import lora_to_ab

    weights: dict[str, NumpyDict] = {}
    fan: dict[str, bool] = {}
    template: dict[str, Any] = {}
    ranks: dict[str, int] = {}
    kind = "delta" if pool.kind == "lora" and space == "delta" else pool.kind
    for j, i in enumerate(idx):
        if pool.kind == "lora":
            mods = pool.lora(i)
            fan.update({k: m.fan_in_fan_out for k, m in mods.items()})
            template = template or pool.adapter_config(i)
            for k, m in mods.items():
                ranks[k] = ranks.get(k, 0) + m.rank
        weights[expert_id(j)] = td_to_numpy(lora_to_ab(mods) if kind == "lora" else pool.task_vector(i))
    spec = EvaluatorSpec(
        base_dir=base_dir, zoo_root=zoo_root, tasks=tuple(chosen),
        task_files={t: Path(ev.task_files[t]) for t in chosen if t in ev.task_files},
        metric=ev.metric, max_samples=ev.max_samples, batch_size=ev.batch_size, task_weights=ev.task_weights,
        rows_per_pass=ev.rows_per_pass,
    )
    return EvolveInputs(names=[pool.names[i] for i in idx], experts=weights, kind=kind,
                        fan_in_fan_out=fan, adapter_template=template, tasks=chosen, evaluator=spec,
                        lora_ranks=ranks)
