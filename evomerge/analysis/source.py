"""One view over the inputs ``analyze_pool`` accepts: a pool, task-vector dicts or a matrix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from evomerge.errors import ConfigError
from evomerge.experts.types import LoraModule


@dataclass
class PoolView:
    """``names``, ``keys``, ``stacked(key) -> Tensor[n, *shape]`` and optional LoRA modules."""

    names: list[str]
    keys: list[str]
    stacked: Callable[[str], torch.Tensor]
    kind: str
    lora: list[Mapping[str, LoraModule]] | None = None

    @property
    def n(self) -> int:
        return len(self.names)


def _names(given: Sequence[str] | None, found: Sequence[str] | None, n: int) -> list[str]:
    names = list(given) if given is not None else list(found) if found is not None else [f"expert_{i}" for i in range(n)]
    if len(names) != n:
        raise ConfigError(f"`names` has {len(names)} entries for {n} experts")
    if len(set(names)) != n:
        raise ConfigError(f"`names` must be distinct, got {names}")
    return [str(x) for x in names]


def pool_view(source: Any, names: Sequence[str] | None = None, lora_modules: Sequence[Mapping[str, LoraModule]] | None = None) -> PoolView:
    """Wrap an ``ExpertPool``-like object (``names``/``keys()``/``stacked()``, optional
    ``kind``/``lora(i)``), a list of task-vector ``TensorDict``s (one per expert), or a
    ``Tensor[n, d]`` of flattened task vectors."""
    if isinstance(source, torch.Tensor):
        if source.ndim != 2:
            raise ConfigError(f"a task-vector matrix must be [n_experts, d]; got shape {tuple(source.shape)}")
        view = PoolView(_names(names, None, source.shape[0]), ["task_vector"], lambda _k: source, "matrix")
    elif isinstance(source, (list, tuple)) and source and all(isinstance(t, Mapping) for t in source):
        keys = sorted(source[0])
        for i, td in enumerate(source[1:], 1):
            if sorted(td) != keys:
                raise ConfigError(f"task vector {i} has different keys from task vector 0")
        view = PoolView(_names(names, None, len(source)), keys, lambda k: torch.stack([td[k] for td in source]), "full")
    elif hasattr(source, "keys") and hasattr(source, "stacked") and hasattr(source, "names"):
        kind = str(getattr(source, "kind", "full"))
        view = PoolView(_names(names, source.names, len(source.names)), list(source.keys()), source.stacked, kind)
        if lora_modules is None and kind == "lora" and hasattr(source, "lora"):
            lora_modules = [source.lora(i) for i in range(view.n)]
    else:
        raise ConfigError(
            "analyze_pool needs an expert pool, a list of task-vector dicts or a [n, d] tensor; "
            f"got {type(source).__name__}"
        )
    if lora_modules is not None:
        if len(lora_modules) != view.n:
            raise ConfigError(f"`lora_modules` has {len(lora_modules)} entries for {view.n} experts")
        view.lora = list(lora_modules)
    if view.n < 2:
        raise ConfigError(f"pool analysis needs at least 2 experts, got {view.n}")
    if not view.keys:
        raise ConfigError("the pool has no tensors to analyse")
    return view
