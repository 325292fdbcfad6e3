"""The single streaming pass over a pool: every statistic the analysis needs, one key at a time.

Nothing holds more than one parameter tensor of the pool (stacked over experts) at once, plus:
the ``n x n`` Gram matrix, per-row power sums, a shared uniform sample of coordinates (for tail
indices and histograms) and per-key principal-angle rows.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from evomerge.analysis.source import PoolView
from evomerge.errors import ExpertLoadError
from evomerge.theory.geometry import angles_between_bases, layer_index, lora_basis, orthonormal_basis, randomized_left_subspace
from evomerge.theory.moments import _BLOCK, GramAccumulator
from evomerge.theory.tails import lora_singular_values, spectrum_summary

RhtFn = Callable[[str, torch.Tensor], torch.Tensor]


def _blocks(parts: list[torch.Tensor], rows: int, dtype: torch.dtype) -> Iterator[torch.Tensor]:
    """Column blocks of the row groups stacked together (never copies a whole tensor at once)."""
    flat = [p.reshape(p.shape[0], -1) for p in parts]
    if sum(f.shape[0] for f in flat) != rows:
        raise ValueError(f"expected {rows} rows, got {[f.shape[0] for f in flat]}")
    for start in range(0, flat[0].shape[1], _BLOCK):
        yield torch.cat([f[:, start : start + _BLOCK].to(dtype) for f in flat])


@dataclass
class PowerSums:
    """Per-row float64 sums of x, x^2, x^3, x^4, |x|, zero count and max |x|."""

    rows: int
    count: int = 0
    s: np.ndarray = field(init=False)  # [4, rows]: sum x^p, p = 1..4
    abs1: np.ndarray = field(init=False)
    zeros: np.ndarray = field(init=False)
    maxabs: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.s = np.zeros((4, self.rows))
        self.abs1 = np.zeros(self.rows)
        self.zeros = np.zeros(self.rows, dtype=np.int64)
        self.maxabs = np.zeros(self.rows)

    def update(self, parts: list[torch.Tensor]) -> None:
        """Add columns; ``parts`` are row groups ``[r_i, m]`` with sum r_i = rows."""
        for b in _blocks(parts, self.rows, torch.float64):
            p = b.clone()
            for i in range(4):
                self.s[i] += p.sum(1).numpy()
                if i < 3:
                    p.mul_(b)
            a = b.abs()
            self.abs1 += a.sum(1).numpy()
            self.zeros += (b == 0).sum(1).numpy()
            self.maxabs = np.maximum(self.maxabs, a.amax(1).numpy())
            self.count += b.shape[1]


@dataclass
class Reservoir:
    """A uniform sample (without replacement) of coordinate positions, shared by all rows:
    each coordinate gets a random priority and the ``size`` smallest are kept."""

    rows: int
    size: int
    generator: torch.Generator
    prio: torch.Tensor = field(init=False)
    values: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.prio = torch.empty(0)
        self.values = torch.empty(self.rows, 0)

    def update(self, parts: list[torch.Tensor]) -> None:
        for b in _blocks(parts, self.rows, torch.float32):
            pr = torch.rand(b.shape[1], generator=self.generator)
            prio = torch.cat([self.prio, pr])
            vals = torch.cat([self.values, b], dim=1)
            if prio.numel() > self.size:
                keep = torch.topk(prio, self.size, largest=False).indices
                prio, vals = prio[keep], vals[:, keep]
            self.prio, self.values = prio, vals


@dataclass
class PoolStats:
    """What the pass collected. Rows of ``sums``/``sample``: experts, then the uniform merge,
    then (if RHT ran) the uniform merge after RHT."""

    gram: GramAccumulator
    sums: PowerSums
    sample: Reservoir
    has_rht: bool
    angle_rows: list[dict[str, Any]]
    spectra: list[list[dict[str, float]]]  # per expert, one spectrum summary per 2-D tensor


def _bases(view: PoolView, key: str, x: torch.Tensor, rank: int, seed: int) -> list[np.ndarray] | None:
    """Per expert, an orthonormal basis of the delta's output subspace for a 2-D key."""
    if view.lora is not None and all(key in m for m in view.lora):
        return [orthonormal_basis(lora_basis(m[key], "out")) for m in view.lora]
    if x.ndim != 3:
        return None
    g = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(key.encode())) % (2**63))
    return [randomized_left_subspace(x[i], rank, g) for i in range(x.shape[0])]


# Largest min(out, in) of a full (non-LoRA) 2-D delta whose whole spectrum is computed.
SPECTRUM_MAX_DIM = 1024


def _spectra(view: PoolView, key: str, x: torch.Tensor) -> list[dict[str, float]] | None:
    """Per expert, the singular-value summary of this tensor's delta (LoRA: from the factors)."""
    if view.lora is not None and all(key in m for m in view.lora):
        return [spectrum_summary(lora_singular_values(m[key].B, m[key].A, m[key].scale)) for m in view.lora]
    if x.ndim != 3 or min(x.shape[1:]) > SPECTRUM_MAX_DIM:
        return None
    return [spectrum_summary(np.linalg.svd(x[i].double().numpy(), compute_uv=False)) for i in range(x.shape[0])]


def collect(
    view: PoolView,
    *,
    rht: RhtFn | None,
    seed: int,
    sample_size: int,
    angle_rank: int,
    progress: bool = True,
) -> PoolStats:
    n = view.n
    rows = n + 1 + (1 if rht else 0)
    gram = GramAccumulator(n)
    sums = PowerSums(rows)
    sample = Reservoir(rows, sample_size, torch.Generator().manual_seed(seed))
    angle_rows: list[dict[str, Any]] = []
    spectra: list[list[dict[str, float]]] = [[] for _ in range(n)]
    for key in tqdm(view.keys, desc="analyze", unit="tensor", disable=not progress):
        x = view.stacked(key).float()
        if x.shape[0] != n:
            raise ExpertLoadError(f"tensor `{key}`: the pool returned {x.shape[0]} experts, expected {n}")
        gram.update(x)
        merged = x.mean(0)
        parts = [x.reshape(n, -1), merged.reshape(1, -1)]
        if rht:
            parts.append(rht(key, merged).reshape(1, -1).float())
        sums.update(parts)
        sample.update(parts)
        for i, summary in enumerate(_spectra(view, key, x) or []):
            spectra[i].append(summary)
        bases = _bases(view, key, x, angle_rank, seed)
        if bases is not None:
            for i in range(n):
                for j in range(i + 1, n):
                    ang = angles_between_bases(bases[i], bases[j])
                    if ang.size:
                        angle_rows.append({
                            "key": key, "layer": layer_index(key), "expert_i": i, "expert_j": j,
                            "name_i": view.names[i], "name_j": view.names[j], "n_angles": int(ang.size),
                            "mean_angle": float(ang.mean()), "min_angle": float(ang.min()),
                            "max_angle": float(ang.max()),
                        })
    return PoolStats(gram=gram, sums=sums, sample=sample, has_rht=bool(rht), angle_rows=angle_rows,
                     spectra=spectra)
