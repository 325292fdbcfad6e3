"""Which coordinates each expert keeps before the sign election: one typed mode per way of
choosing them (magnitude thresholds, DARE draws; on CPU or in the GPU kernels).

A CPU mode sparsifies a column block of ``rows`` (:meth:`load`); ``out_divisor`` divides the
merged block instead of every survivor (one pass over ``[numel]`` instead of ``[n, numel]``).
The ``Kernel*`` modes are carried out inside the fused GPU kernel of
:mod:`evomerge.merging.methods._cuda`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import torch

from evomerge.merging.methods import _cuda
from evomerge.merging.methods._dare import FastDareMask
from evomerge.merging.methods._select import keep_count, kth_largest, topk_mask


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half precision is merged in float32 and cast back at the end."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@dataclass(frozen=True)
class Thresholds:
    """Keep ``|x_i| >= thresholds[i]``; a row listed in ``masks`` (a tie at its threshold, or
    ``k = 0``) has threshold 0 and keeps its explicit float 0/1 mask instead."""

    thresholds: torch.Tensor
    masks: dict[int, torch.Tensor] = field(default_factory=dict)
    out_divisor = 1.0

    def load(self, rows: torch.Tensor, c0: int, c1: int, buf: torch.Tensor) -> torch.Tensor:
        # float masks: on CPU, bool comparisons and bool multiplies on 2-D blocks are several times slower
        sub = buf.copy_(rows[:, c0:c1])
        sub.mul_(sub.abs().ge_(self.thresholds.view(-1, 1)))
        for i, m in self.masks.items():
            sub[i].mul_(m[c0:c1])
        return sub


@dataclass(frozen=True)
class DenseDare:
    """peft's DARE draw: a full ``[n, numel]`` float 0/1 mask; survivors divided by ``density``."""

    mask: torch.Tensor
    density: float
    out_divisor = 1.0

    def load(self, rows: torch.Tensor, c0: int, c1: int, buf: torch.Tensor) -> torch.Tensor:
        sub = buf.copy_(rows[:, c0:c1]).mul_(self.mask[:, c0:c1])
        return sub.div_(self.density)


@dataclass(frozen=True)
class BlockDare:
    """Fast DARE: the mask of each column block drawn from :class:`FastDareMask` as it is needed;
    the merged block is divided by ``density``."""

    draws: FastDareMask
    density: float

    @property
    def out_divisor(self) -> float:
        return self.density

    def load(self, rows: torch.Tensor, c0: int, c1: int, buf: torch.Tensor) -> torch.Tensor:
        return torch.mul(rows[:, c0:c1], self.draws.block(c0, c1, buf.device), out=buf)  # copy and mask in one pass


@dataclass(frozen=True)
class KernelTopK:
    """GPU kernel: per-row thresholds; a row tied at its threshold ``t > 0`` keeps exactly ``k``
    (``n_ge``: entries ``>= t`` per row); a tie at ``t = 0`` needs nothing (fewer than ``k``
    nonzeros, and keeping zeros changes nothing)."""

    thresholds: torch.Tensor
    k: int
    n_ge: torch.Tensor


@dataclass(frozen=True)
class KernelDare:
    """GPU kernel: the kernel draws the DARE mask itself (Philox, keyed by ``seed``)."""

    seed: int
    density: float


CpuKeep = Union[Thresholds, DenseDare, BlockDare]
Keep = Union[CpuKeep, KernelTopK, KernelDare, None]


def magnitude_keep(rows: torch.Tensor, density: float, *, kernel: bool = True) -> Thresholds | KernelTopK | None:
    """Per-row exact top-``k`` magnitudes, ``k = int(density * numel)`` (``None``: keep
    everything). ``kernel=False`` never hands the selection to the GPU kernels."""
    n, numel = rows.shape
    k = keep_count(density, numel)
    if density >= 1 or k >= numel:
        return None
    if kernel and k >= 1 and _cuda.usable(rows):
        thresholds, n_ge = _cuda.row_thresholds(rows, k)
        return KernelTopK(thresholds, k, n_ge)
    buf = torch.empty(numel, dtype=compute_dtype(rows.dtype), device=rows.device)
    thresholds = torch.empty(n, dtype=buf.dtype, device=rows.device)
    masks: dict[int, torch.Tensor] = {}
    for i in range(n):
        if rows.dtype == buf.dtype:
            torch.abs(rows[i], out=buf)
        else:
            buf.copy_(rows[i]).abs_()
        if k == 0:
            masks[i] = torch.zeros(numel, dtype=buf.dtype, device=rows.device)
            thresholds[i] = 0.0
            continue
        v, n_ge = kth_largest(buf, k)
        thresholds[i] = v
        if n_ge > k:
            thresholds[i] = 0.0
            masks[i] = topk_mask(buf, k).to(buf.dtype)
    return Thresholds(thresholds, masks)


def dare_keep(rows: torch.Tensor, density: float, generator: torch.Generator, rng: str) -> DenseDare | BlockDare | KernelDare | None:
    """DARE: keep each coordinate with probability ``density``; survivors are divided by it.

    ``rng="peft"``: row ``i`` draws ``numel`` uniforms from ``generator`` after row ``i-1``; a
    coordinate survives when its draw is ``< density``. This is the draw ``torch.bernoulli``
    makes on CPU, so seeding the global RNG with the generator's seed reproduces peft's masks
    (costs one float32 uniform per coordinate and a full ``[n, numel]`` mask).
    ``rng="fast"``: :class:`FastDareMask`, seeded by ``generator.initial_seed()`` (so the same
    seed gives the same mask on every CPU, and on CUDA without Triton; give each tensor its own
    seeded generator, as :func:`evomerge.seeding.tensor_generator` does), drawn block by
    block (no full-size mask).
    Where the GPU kernels run (:func:`evomerge.merging.methods._cuda.usable`), ``"fast"`` is
    their in-kernel Philox draw instead: same keep probability and seed, different stream.
    """
    if rng not in ("fast", "peft"):
        raise ValueError(f"dare_keep: rng must be 'fast' or 'peft', not {rng!r}")
    if density >= 1:
        return None
    n, numel = rows.shape
    if rng == "fast":
        if _cuda.usable(rows):
            return KernelDare(generator.initial_seed(), density)
        return BlockDare(FastDareMask(n, numel, density, generator.initial_seed()), density)
    dtype = compute_dtype(rows.dtype)
    draws = torch.empty((n, numel), dtype=dtype, device=rows.device)
    for i in range(n):  # row after row, as peft draws one tensor after another
        torch.rand(numel, dtype=dtype, device=rows.device, generator=generator, out=draws[i])
    return DenseDare(draws.lt_(density), density)
