"""Result types of merge operators and the deterministic per-key seeding they share."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PerTaskMerge:
    """A merge that keeps a little per-task state (e.g. EMR-merging).

    ``unified``: the shared vector ``[*shape]``; ``masks``: boolean ``[n, *shape]``;
    ``rescalers``: ``[n]``. Task ``i`` uses ``rescalers[i] * masks[i] * unified``.
    Callers that need one single-model delta use :meth:`merged` (= the unified vector,
    evomerge's convention).
    """

    unified: torch.Tensor
    masks: torch.Tensor
    rescalers: torch.Tensor

    @property
    def n(self) -> int:
        return int(self.masks.shape[0])

    def task_delta(self, i: int) -> torch.Tensor:
        """Delta used for task ``i``."""
        return self.unified * self.masks[i].to(self.unified.dtype) * self.rescalers[i].to(self.unified.dtype)

    def merged(self) -> torch.Tensor:
        """The single-model delta (the unified vector)."""
        return self.unified

    def to(self, device: torch.device | str) -> "PerTaskMerge":
        return PerTaskMerge(self.unified.to(device), self.masks.to(device), self.rescalers.to(device))


def derive_seed(seed: int, key: str, salt: str = "") -> int:
    """A 63-bit seed from ``(seed, key, salt)``; stable across processes (unlike ``hash``)."""
    h = hashlib.blake2b(f"{salt}\x00{int(seed)}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def key_generator(seed: int, key: str, device: torch.device | str = "cpu", salt: str = "") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded from ``(seed, key, salt)``."""
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(derive_seed(seed, key, salt))
    return g
