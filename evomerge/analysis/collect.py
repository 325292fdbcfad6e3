"""The single streaming pass over a pool: every statistic the analysis needs, one key at a time.

Nothing holds more than one parameter tensor of the pool (stacked over experts) at once, plus:
the ``n x n`` Gram matrix, per-row power sums, a shared uniform sample of coordinates (for tail
indices and histograms) and per-key principal-angle rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from evomerge.analysis.source import PoolView
from evomerge.errors import ExpertLoadError
from evomerge.seeding import tensor_generator
from evomerge.theory.geometry import angles_between_bases, layer_index, left_subspace_and_spectrum, lora_basis, orthonormal_basis
from evomerge.theory.moments import _BLOCK, GramAccumulator
from evomerge.theory.tails import lora_singular_values, partial_spectrum_summary, spectrum_summary

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


def _bases_and_spectra(view: PoolView, key: str, x: torch.Tensor, rank: int, seed: int
                       ) -> tuple[list[np.ndarray], list[dict[str, float]]] | None:
    """Per expert, an orthonormal basis of the delta's output subspace for a 2-D key and the
    singular-value summary of the delta (LoRA: exact, from the factors; full: exact for small
    matrices, else stable rank / top-1 energy from a seeded randomized SVD)."""
    if view.lora is not None and all(key in m for m in view.lora):
        mods = [m[key] for m in view.lora]
        return ([orthonormal_basis(lora_basis(m, "out")) for m in mods],
                [spectrum_summary(lora_singular_values(m.B, m.A, m.scale)) for m in mods])
    if x.ndim != 3:
        return None
    g = tensor_generator(seed, key, salt="analysis-svd")
    bases, spectra = [], []
    for i in range(x.shape[0]):
        basis, s, complete = left_subspace_and_spectrum(x[i], rank, g)
        bases.append(basis)
        fro2 = float(x[i].double().pow(2).sum())
        spectra.append(spectrum_summary(s) if complete else partial_spectrum_summary(s, fro2))
    return bases, spectra


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
        found = _bases_and_spectra(view, key, x, angle_rank, seed)
        if found is not None:
            bases, summaries = found
            for i, summary in enumerate(summaries):
                spectra[i].append(summary)
            for i in range(n):
                for j in range(i + 1, n):
                    ang = angles_between_bases(bases[i], bases[j])
                    if ang.size:
                        angle_rows.append({
                            "key": key, "layer": layer_index(key), "expert_i": i, "expert_j": j,
                            "name_i": view.names[i], "name_j": view.names[j], "dim": int(bases[i].shape[0]),
                            "rank_i": int(bases[i].shape[1]), "rank_j": int(bases[j].shape[1]), "n_angles": int(ang.size),
                            "mean_angle": float(ang.mean()), "min_angle": float(ang.min()),
                            "max_angle": float(ang.max()),
                        })
    return PoolStats(gram=gram, sums=sums, sample=sample, has_rht=bool(rht), angle_rows=angle_rows,
                     spectra=spectra)
