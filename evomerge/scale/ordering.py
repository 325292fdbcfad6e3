"""Expert ordering for the scale experiment: as given, random, or greedy lowest correlation first.

The correlation matrix is the Pearson correlation of the flattened task vectors
(``evomerge.theory.estimate_sigma_rho`` returns it beside sigma^2 and rho).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from evomerge.errors import ConfigError

Order = Literal["given", "random", "low_correlation"]


def low_correlation_order(corr: np.ndarray) -> list[int]:
    """Greedy order: the least correlated pair first, then repeatedly the expert whose mean
    correlation with those already chosen is lowest (ties go to the lower index).
    """
    corr = np.asarray(corr, dtype=np.float64)
    n = corr.shape[0]
    if n <= 1:
        return list(range(n))
    best = None
    for i in range(n):
        for j in range(i + 1, n):
            if best is None or corr[i, j] < corr[best[0], best[1]]:
                best = (i, j)
    order = [best[0], best[1]]
    rest = [i for i in range(n) if i not in order]
    while rest:
        scores = [corr[i, order].mean() for i in rest]
        pick = rest[int(np.argmin(scores))]  # argmin returns the first minimum: lowest index
        order.append(pick)
        rest.remove(pick)
    return order


def order_experts(n: int, mode: Order, *, seed: int, corr: np.ndarray | None = None) -> list[int]:
    """Indices 0..n-1 in the order experts are added (k = 1, 2, ...)."""
    if mode == "given":
        return list(range(n))
    if mode == "random":
        return [int(i) for i in np.random.default_rng(seed).permutation(n)]
    if mode == "low_correlation":
        if corr is None:
            raise ConfigError("scale.order `low_correlation` needs the experts' correlation matrix")
        if corr.shape != (n, n):
            raise ConfigError(f"scale.order: correlation matrix has shape {corr.shape}, expected ({n}, {n})")
        return low_correlation_order(corr)
    raise ConfigError(f"`scale.order` must be one of given, random, low_correlation. Got {mode!r} instead.")
