"""Result types of merge operators (per-key seeding lives in :mod:`evomerge.seeding`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from evomerge.seeding import tensor_generator as key_generator  # noqa: F401  (the operators' per-key seeding)
from evomerge.seeding import tensor_seed as derive_seed  # noqa: F401


@dataclass(frozen=True)
class PerTaskMerge:
    """A merge that keeps a little per-task state (e.g. EMR-merging).

    ``unified``: the shared vector ``[*shape]``; ``masks``: boolean ``[n, *shape]``;
    ``rescalers``: ``[n]``. Task ``i`` uses ``rescalers[i] * masks[i] * unified``.
    ``task_mass`` / ``kept_mass`` (``[n]``, optional): this tensor's ``mean|tau_i|`` and
    ``mean|masks[i] * unified|``, the terms a rescaler over the whole model sums.
    Callers that need one single-model delta use :meth:`merged` (= the unified vector,
    evomerge's convention).
    """

    unified: torch.Tensor
    masks: torch.Tensor
    rescalers: torch.Tensor
    task_mass: torch.Tensor | None = None
    kept_mass: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return int(self.masks.shape[0])

    def task_delta(self, i: int) -> torch.Tensor:
        """Delta used for task ``i``."""
        return self.unified * self.masks[i].to(self.unified.dtype) * self.rescalers[i].to(self.unified.dtype)

    def merged(self) -> torch.Tensor:
        """The single-model delta (the unified vector)."""
        return self.unified

    def replace(self, **changes) -> "PerTaskMerge":
        return dataclasses.replace(self, **changes)

    def to(self, device: torch.device | str) -> "PerTaskMerge":
        def mv(t):
            return None if t is None else t.to(device)

        return PerTaskMerge(mv(self.unified), mv(self.masks), mv(self.rescalers), mv(self.task_mass), mv(self.kept_mass))
