"""Theorem 1 in its general form (the paper's eq. 18) and the stop rule built on it.

A merge ``sum_i a_i tau_i`` of experts whose coordinates have per-expert variance ``s_i^2``
and pairwise correlation ``rho_ij`` has variance

    V(a) = sum_i a_i^2 s_i^2 + sum_{i != j} a_i a_j rho_ij s_i s_j  =  a^T C a,

with ``C_ij = rho_ij s_i s_j`` the experts' covariance. Along an order of the pool and a
method's weights ``a^(k)`` for the first k experts this gives a curve ``V(1), V(2), ...``; the
k-th expert is worth adding while the drop ``V(k-1) - V(k)`` is at least ``Delta``.

Unlike the equicorrelated form (``evomerge.theory.variance``) the curve depends on the data:
which experts come first, how unequal their variances are, which pairs are correlated. A drop
can be negative (an expert with a large variance, or summing weights as task arithmetic does),
and the rule then stops there.

Delta, three ways (``delta_for``):

* ``fixed``: a number.
* ``relative``: a fraction f in (0, 1) of the first drop ``V(1) - V(2)``.
* ``adaptive``: the paper's "expected drop", the mean drop over the pool
  ``(V(1) - V(N)) / (N - 1)``. With equal ``s_i`` and ``rho`` and uniform weights this is
  ``sigma^2 (1 - rho) / N`` and the rule fires at ``floor(sqrt(N + 1/4) + 1/2)`` whatever the
  experts (3 for 10 experts, 6 for 36): it measures the pool's size, not its data. With unequal
  variances and correlations it moves away from sqrt(N), but stays tied to N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np

from evomerge.errors import ConfigError

DeltaMode = Literal["fixed", "relative", "adaptive"]

DELTA_RTOL = 1e-9


def reaches_delta(drop: float, delta: float) -> bool:
    """Whether a variance drop is worth an expert: ``drop >= delta``, with a drop equal to
    ``delta`` up to rounding (within ``DELTA_RTOL`` relative) counting as reaching it. Ties are
    built in: a relative Delta of f = 0.1 equals the equicorrelated drop at k = 5,
    ``sigma^2 (1 - rho) / 20``, and the adaptive one the drop at n whenever N = n (n - 1); the
    two sides are computed along different float paths. The one comparison every rule uses."""
    return drop >= delta * (1.0 - DELTA_RTOL)


def covariance_from(variances: Sequence[float], corr: np.ndarray) -> np.ndarray:
    """``C_ij = rho_ij s_i s_j`` from per-expert variances ``s_i^2`` and the correlation matrix."""
    s2 = np.asarray(variances, dtype=np.float64).ravel()
    c = np.asarray(corr, dtype=np.float64)
    n = s2.size
    if c.shape != (n, n):
        raise ConfigError(f"correlation matrix has shape {c.shape}, expected ({n}, {n}) for {n} variances")
    if np.any(~np.isfinite(s2)) or np.any(s2 < 0):
        raise ConfigError("per-expert variances must be finite and >= 0")
    if np.any(~np.isfinite(c)) or np.any(np.abs(c) > 1 + 1e-9) or not np.allclose(c, c.T, atol=1e-9):
        raise ConfigError("the correlation matrix must be symmetric with entries in [-1, 1]")
    s = np.sqrt(s2)
    return c * np.outer(s, s)


def general_merged_variance(cov: np.ndarray, subset: Sequence[int], weights: Sequence[float]) -> float:
    """Eq. 18: ``a^T C[subset, subset] a`` (weights need not sum to 1)."""
    idx = list(subset)
    a = np.asarray(weights, dtype=np.float64).ravel()
    if a.size != len(idx):
        raise ConfigError(f"{a.size} weights for {len(idx)} experts")
    if not np.all(np.isfinite(a)):
        raise ConfigError("merge weights must be finite")
    sub = np.asarray(cov, dtype=np.float64)[np.ix_(idx, idx)]
    return float(a @ sub @ a)


def uniform_weights(k: int) -> np.ndarray:
    return np.full(k, 1.0 / k)


def general_variance_curve(cov: np.ndarray, order: Sequence[int],
                           weights_for: Callable[[int], Sequence[float]] = uniform_weights) -> np.ndarray:
    """``V(k)`` for k = 1..len(order): the first k experts of ``order`` with ``weights_for(k)``."""
    order = list(order)
    if not order:
        raise ConfigError("the order must hold at least one expert")
    return np.array([general_merged_variance(cov, order[:k], weights_for(k)) for k in range(1, len(order) + 1)])


def delta_for(curve: Sequence[float], mode: DeltaMode, value: float | None = None) -> float:
    """Delta for a variance curve ``V(1..N)``: ``fixed`` (``value``), ``relative`` (``value`` times
    the first drop) or ``adaptive`` (mean drop over the curve). Raises on a non-positive result."""
    v = np.asarray(curve, dtype=np.float64)
    if mode == "fixed":
        if value is None or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"`scale.delta`: a fixed Delta must be a number > 0. Got {value!r} instead.")
        return float(value)
    if v.size < 2:
        raise ConfigError(f"a {mode} Delta needs at least 2 experts; got {v.size}")
    if mode == "relative":
        if value is None or not 0.0 < value < 1.0:
            raise ConfigError(f"`scale.delta_fraction` must be in (0, 1). Got {value!r} instead.")
        first = float(v[0] - v[1])
        if not first > 0:
            raise ConfigError(f"a relative Delta needs a positive first drop; V(1) - V(2) = {first:.4g}")
        return value * first
    if mode == "adaptive":
        mean_drop = float(v[0] - v[-1]) / (v.size - 1)
        if not mean_drop > 0:
            raise ConfigError(f"the adaptive Delta (mean drop over the pool) is {mean_drop:.4g}, not > 0")
        return mean_drop
    raise ConfigError(f"Delta mode must be fixed, relative or adaptive. Got {mode!r} instead.")


@dataclass(frozen=True)
class Theorem1Fire:
    """Where the rule fired: ``fired_k`` is the last k worth merging (``drop(k+1) < delta``);
    ``fired`` is False when every drop up to the pool size clears Delta (fired_k = N)."""

    fired_k: int
    fired: bool
    delta: float
    curve: list[float]
    drops: list[float]  # drops[j] = V(j+1) - V(j+2): the gain of adding expert j+2


def theorem1_stop(curve: Sequence[float], delta: float) -> Theorem1Fire:
    """The first k whose next drop falls below ``delta`` (a rise counts as a drop below it;
    a drop equal to ``delta`` up to rounding reaches it: :func:`reaches_delta`)."""
    if not delta > 0:
        raise ConfigError(f"Delta must be > 0. Got {delta!r} instead.")
    v = np.asarray(curve, dtype=np.float64)
    drops = (v[:-1] - v[1:]).tolist()
    for j, d in enumerate(drops):
        if not reaches_delta(d, delta):
            return Theorem1Fire(j + 1, True, float(delta), v.tolist(), drops)
    return Theorem1Fire(int(v.size), False, float(delta), v.tolist(), drops)


def theorem1_rule(curve: Sequence[float], mode: DeltaMode, value: float | None = None) -> tuple[float | None, Theorem1Fire]:
    """``(Delta, where the rule fires)`` along a variance curve. A relative Delta scales the first
    drop and an adaptive one the mean drop; when that drop is not positive (a second expert that
    raises the merged variance, summed weights, a pool whose later experts are far larger) there
    is no positive Delta: Delta is None and the rule keeps adding experts while the variance still
    falls (its limit Delta -> 0: the last k before the first drop that is not positive). Every other
    refusal of :func:`delta_for` (a fixed Delta not > 0, a fraction outside (0, 1), one expert)
    stands."""
    v = np.asarray(curve, dtype=np.float64)
    if mode in ("relative", "adaptive") and v.size >= 2:
        if mode == "relative" and (value is None or not 0.0 < value < 1.0):
            delta_for(v, mode, value)  # (the fraction's own refusal)
        scaled = (v[0] - v[1]) if mode == "relative" else (v[0] - v[-1]) / (v.size - 1)
        if not scaled > 0:
            drops = (v[:-1] - v[1:]).tolist()
            j = next((i for i, d in enumerate(drops) if not d > 0), None)
            fired_k = int(v.size) if j is None else j + 1
            return None, Theorem1Fire(fired_k, j is not None, float("nan"), v.tolist(), drops)
    delta = delta_for(v, mode, value)
    return delta, theorem1_stop(v, delta)
