"""Expert ordering for the scale experiment: given, random, low |correlation| first, or own-task gain.

The correlation matrix is the Pearson correlation of the flattened task vectors
(``evomerge.theory.estimate_sigma_rho``); an expert's *gain* is its validation score on its own
task minus the base model's there (measured by the driver before the plan is made).
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

from evomerge.errors import ConfigError

Order = Literal["given", "random", "low_correlation", "gain"]
ORDERS = ("given", "random", "low_correlation", "gain")


def _eligible_first(gains: Sequence[float] | None, n: int) -> list[int]:
    """Experts allowed first: those that beat the base on their own task (all when gains are unknown)."""
    if gains is None:
        return list(range(n))
    g = np.asarray(gains, dtype=np.float64)
    ok = [i for i in range(n) if np.isfinite(g[i]) and g[i] > 0]
    if not ok:
        raise ConfigError("scale.order: no expert beats the base model on its own task (validation); "
                          "there is nothing to merge")
    return ok


def low_correlation_order(corr: np.ndarray, gains: Sequence[float] | None = None) -> list[int]:
    """Greedy order on |corr|: the least correlated pair whose first expert beats the base on
    its own task (of the two, the larger gain first), then repeatedly the expert whose mean
    |corr| with those already chosen is lowest (ties go to the lower index)."""
    a = np.abs(np.asarray(corr, dtype=np.float64))
    n = a.shape[0]
    first_ok = _eligible_first(gains, n)
    if n <= 1:
        return list(range(n))
    g = np.zeros(n) if gains is None else np.nan_to_num(np.asarray(gains, dtype=np.float64), nan=-np.inf)
    best = None
    for i in range(n):
        for j in range(i + 1, n):
            if (i in first_ok or j in first_ok) and (best is None or a[i, j] < a[best[0], best[1]]):
                best = (i, j)
    i, j = best
    if j in first_ok and (i not in first_ok or g[j] > g[i]):
        i, j = j, i
    order = [i, j]
    rest = [x for x in range(n) if x not in order]
    while rest:
        scores = [a[x, order].mean() for x in rest]
        pick = rest[int(np.argmin(scores))]  # argmin returns the first minimum: lowest index
        order.append(pick)
        rest.remove(pick)
    return order


def gain_order(gains: Sequence[float]) -> list[int]:
    """Own-task gain over the base, best first (ties go to the lower index)."""
    g = np.nan_to_num(np.asarray(gains, dtype=np.float64), nan=-np.inf)
    return [int(i) for i in np.argsort(-g, kind="stable")]


def order_experts(n: int, mode: Order, *, seed: int, corr: np.ndarray | None = None,
                  gains: Sequence[float] | None = None) -> list[int]:
    """Indices 0..n-1 in the order experts are added (k = 1, 2, ...)."""
    if mode == "given":
        return list(range(n))
    if mode == "random":
        return [int(i) for i in np.random.default_rng(seed).permutation(n)]
    if gains is not None and len(gains) != n:
        raise ConfigError(f"scale.order: {len(gains)} expert gains for {n} experts")
    if mode == "low_correlation":
        if corr is None:
            raise ConfigError("scale.order `low_correlation` needs the experts' correlation matrix")
        if corr.shape != (n, n):
            raise ConfigError(f"scale.order: correlation matrix has shape {corr.shape}, expected ({n}, {n})")
        return low_correlation_order(corr, gains)
    if mode == "gain":
        if gains is None:
            raise ConfigError("scale.order `gain` needs each expert's own-task gain over the base")
        return gain_order(gains)
    raise ConfigError(f"`scale.order` must be one of {', '.join(ORDERS)}. Got {mode!r} instead.")
