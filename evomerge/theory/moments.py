"""Streaming second moments of a pool of flattened task vectors.

Experts are rows of a virtual matrix ``X[n, d]`` that is never materialised: callers feed it
column blocks (one parameter tensor at a time, stacked over experts). Everything the theory
needs (per-expert variance, Pearson correlation, cosine, PCA over experts) derives from the
raw Gram matrix ``X X^T``, the row sums and the column count, accumulated in float64.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch

from evomerge.errors import ConfigError, ExpertLoadError

# Column block size (elements per expert) converted to float64 at once; bounds peak memory.
_BLOCK = 1 << 20


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """View a stacked tensor ``[n, *shape]`` as ``[n, prod(shape)]``."""
    if x.ndim == 0:
        raise ConfigError("stacked tensor must have an expert dimension; got a scalar")
    return x.reshape(x.shape[0], -1)


@dataclass
class GramAccumulator:
    """Accumulates ``X X^T``, row sums and column count over column blocks of ``X``."""

    n: int
    count: int = 0
    gram: np.ndarray = field(init=False)
    sums: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ConfigError(f"number of experts must be >= 1, got {self.n}")
        self.gram = np.zeros((self.n, self.n), dtype=np.float64)
        self.sums = np.zeros(self.n, dtype=np.float64)

    def update(self, stacked: torch.Tensor) -> None:
        """Add the columns of ``stacked`` (``[n, *shape]``)."""
        rows = as_rows(stacked)
        if rows.shape[0] != self.n:
            raise ConfigError(f"stacked tensor has {rows.shape[0]} experts, expected {self.n}")
        for start in range(0, rows.shape[1], _BLOCK):
            blk = rows[:, start : start + _BLOCK].to(torch.float64)
            self.gram += (blk @ blk.T).numpy()
            self.sums += blk.sum(dim=1).numpy()
            self.count += blk.shape[1]

    def extend(self, blocks: Iterable[torch.Tensor]) -> "GramAccumulator":
        for b in blocks:
            self.update(b)
        return self

    def _need_data(self) -> None:
        if self.count == 0:
            raise ConfigError("no task-vector entries were given (empty pool or no tensors)")

    def means(self) -> np.ndarray:
        self._need_data()
        return self.sums / self.count

    def covariance(self) -> np.ndarray:
        """Covariance between experts across coordinates (population, ``1/d``)."""
        m = self.means()
        cov = self.gram / self.count - np.outer(m, m)
        return (cov + cov.T) / 2

    def variances(self) -> np.ndarray:
        return np.clip(np.diag(self.covariance()), 0.0, None)

    def correlation(self) -> np.ndarray:
        """Pearson correlation matrix between experts; a zero-variance expert is an error."""
        cov = self.covariance()
        var = np.clip(np.diag(cov), 0.0, None)
        bad = np.flatnonzero(var <= 1e-300)
        if bad.size:
            raise ExpertLoadError(
                f"expert(s) {bad.tolist()} have zero variance (task vector constant, e.g. identical "
                "to the base); correlation is undefined"
            )
        sd = np.sqrt(var)
        corr = np.clip(cov / np.outer(sd, sd), -1.0, 1.0)
        np.fill_diagonal(corr, 1.0)
        return corr

    def cosine(self) -> np.ndarray:
        self._need_data()
        norms = np.sqrt(np.clip(np.diag(self.gram), 0.0, None))
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = self.gram / np.outer(norms, norms)
        cos = np.clip(np.nan_to_num(cos, nan=0.0), -1.0, 1.0)
        np.fill_diagonal(cos, np.where(norms > 0, 1.0, 0.0))
        return cos

    def centered_gram(self) -> np.ndarray:
        """Gram matrix of experts centred on the mean expert (for PCA with experts as samples)."""
        self._need_data()
        c = np.eye(self.n) - np.full((self.n, self.n), 1.0 / self.n)
        g = c @ self.gram @ c
        return (g + g.T) / 2


def gram_of(x: torch.Tensor | list[torch.Tensor] | Iterable[torch.Tensor]) -> GramAccumulator:
    """Accumulate moments from ``Tensor[n, d]``, a list of n flat tensors, or an iterator of
    per-key stacked tensors ``[n, *shape]``."""
    if isinstance(x, torch.Tensor):
        if x.ndim < 2:
            raise ConfigError(f"task vectors must be [n_experts, d]; got shape {tuple(x.shape)}")
        return GramAccumulator(int(x.shape[0])).extend([x])
    if isinstance(x, (list, tuple)):
        if not x:
            raise ConfigError("no task vectors given")
        if all(t.ndim == 1 for t in x):  # one flat tensor per expert
            sizes = {int(t.numel()) for t in x}
            if len(sizes) != 1:
                raise ConfigError(f"flattened task vectors differ in length: {sorted(sizes)}")
            acc = GramAccumulator(len(x))
            d = sizes.pop()
            for start in range(0, d, _BLOCK):
                acc.update(torch.stack([t[start : start + _BLOCK] for t in x]))
            return acc
        x = iter(x)
    it = iter(x)
    try:
        first = next(it)
    except StopIteration:
        raise ConfigError("no task vectors given (empty iterator)") from None
    acc = GramAccumulator(int(first.shape[0]))
    acc.update(first)
    return acc.extend(it)
