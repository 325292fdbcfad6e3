"""Theorem 1 of "Why Do More Experts Fail?": the variance floor of a merge.

Model: each expert's task vector coordinate has variance ``sigma2`` and every pair of experts
has correlation ``rho``. A merge with weights ``alpha`` (summing to 1) has variance
``sigma2 * (rho + (1 - rho) * sum(alpha_i^2))``; for a uniform merge of n experts that is
``sigma2 * (rho + (1 - rho) / n)``, which falls towards the floor ``sigma2 * rho``. Adding the
n-th expert lowers it by ``sigma2 * (1 - rho) / (n (n - 1))``; merging stops when that drop
falls below a threshold ``delta``.
"""

from __future__ import annotations

import math
from typing import Iterable, Literal, Sequence

import numpy as np
import torch

from evomerge.errors import ConfigError
from evomerge.theory.general_variance import reaches_delta
from evomerge.theory.moments import GramAccumulator, gram_of


def _check_sigma_rho(sigma2: float, rho: float) -> None:
    if not math.isfinite(sigma2) or sigma2 < 0:
        raise ConfigError(f"sigma2 must be a finite number >= 0, got {sigma2}")
    if not math.isfinite(rho) or not -1.0 <= rho <= 1.0:
        raise ConfigError(f"rho must be a correlation in [-1, 1], got {rho}")


def _check_n(n: int, name: str = "n", low: int = 1) -> int:
    if isinstance(n, bool) or int(n) != n or n < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {n}")
    return int(n)


def merged_variance(sigma2: float, rho: float, alphas: Sequence[float] | torch.Tensor | np.ndarray, *, atol: float = 1e-6) -> float:
    """Variance of ``sum_i alpha_i tau_i`` for equicorrelated experts (weights sum to 1)."""
    _check_sigma_rho(sigma2, rho)
    a = np.asarray(alphas.detach().cpu() if isinstance(alphas, torch.Tensor) else alphas, dtype=np.float64).ravel()
    if a.size == 0:
        raise ConfigError("alphas must hold at least one merge weight")
    if not np.all(np.isfinite(a)):
        raise ConfigError(f"alphas must be finite, got {a.tolist()}")
    total = float(a.sum())
    if abs(total - 1.0) > atol:
        raise ConfigError(f"alphas must sum to 1 (within {atol}); they sum to {total:.6g}. Normalise them first.")
    return float(sigma2 * (rho + (1.0 - rho) * float(np.sum(a * a))))


def uniform_merged_variance(sigma2: float, rho: float, n: int) -> float:
    """``sigma2 * (rho + (1 - rho) / n)``: the variance of a uniform merge of n experts."""
    _check_sigma_rho(sigma2, rho)
    n = _check_n(n)
    return float(sigma2 * (rho + (1.0 - rho) / n))


def variance_drop(sigma2: float, rho: float, n: int) -> float:
    """Variance removed by going from n-1 to n uniformly merged experts (n >= 2)."""
    _check_sigma_rho(sigma2, rho)
    n = _check_n(n, low=2)
    return float(sigma2 * (1.0 - rho) / (n * (n - 1)))


def n_max(sigma2: float, rho: float, delta: float) -> int:
    """Largest n whose drop ``variance_drop(n)`` is still >= ``delta`` (1 if none is); a drop
    equal to ``delta`` up to rounding counts (:func:`~evomerge.theory.general_variance.reaches_delta`).

    Closed form ``floor(sqrt(sigma2 (1 - rho) / delta + 1/4) + 1/2)``, then nudged by one step
    where floating point rounding put it on the wrong side of an exact boundary. A relative
    Delta (fraction f of the first drop) gives ``floor(sqrt(2 / f + 1/4) + 1/2)`` (5 at f = 0.1)
    and the adaptive one ``floor(sqrt(N + 1/4) + 1/2)``, whatever ``sigma2`` and ``rho``.
    With ``rho == 1`` or ``sigma2 == 0`` no expert after the first lowers the variance: 1, for
    every ``delta >= 0`` (the adaptive Delta ``sigma2 (1 - rho) / N`` is 0 there: identical
    experts add nothing). Otherwise ``delta`` must be > 0.
    """
    _check_sigma_rho(sigma2, rho)
    if not math.isfinite(delta) or delta < 0:
        raise ConfigError(f"delta must be a finite number > 0 (the smallest variance drop worth an expert), got {delta}")
    if sigma2 * (1.0 - rho) <= 0:  # every drop is 0: only the first expert counts
        return 1
    if delta == 0:
        raise ConfigError(f"delta must be a finite number > 0 (the smallest variance drop worth an expert), got {delta}")
    c = sigma2 * (1.0 - rho) / delta
    if not math.isfinite(c) or c > 1e30:
        raise ConfigError(f"delta={delta} is too small relative to sigma2*(1-rho)={sigma2 * (1 - rho)}: n_max overflows")
    n = max(1, int(math.floor(math.sqrt(c + 0.25) + 0.5)))
    while reaches_delta(variance_drop(sigma2, rho, n + 1), delta):
        n += 1
    while n > 1 and not reaches_delta(variance_drop(sigma2, rho, n), delta):
        n -= 1
    return n


def adaptive_delta(sigma2: float, rho: float, n_available: int, mode: Literal["mean", "at_pool"] = "mean") -> float:
    """A threshold derived from the pool itself ("Delta = the expected drop").

    ``mode="mean"`` (default): the mean drop per added expert over the whole pool,
    ``(V(1) - V(N)) / (N - 1) = sigma2 (1 - rho) / N``. Stopping when the next drop is below the
    average one keeps the experts that pay more than their share; it gives
    ``n_max ~ sqrt(N)`` independent of ``sigma2`` and ``rho`` (N=10 -> 3, N=16 -> 4, N=36 -> 6).
    ``mode="at_pool"``: the drop at the pool size, ``variance_drop(N)``, which keeps the whole
    pool (an upper reference, n_max = N).
    """
    _check_sigma_rho(sigma2, rho)
    n = _check_n(n_available, "n_available", low=2)
    if mode == "mean":
        return float(sigma2 * (1.0 - rho) / n)
    if mode == "at_pool":
        return variance_drop(sigma2, rho, n)
    raise ConfigError(f"adaptive delta mode must be 'mean' or 'at_pool', got {mode!r}")


def stop_index(sigma2: float, rho: float, delta: float, n_available: int) -> int:
    """How many of the ``n_available`` experts to merge: ``min(n_max, n_available)``."""
    n_available = _check_n(n_available, "n_available")
    return min(n_max(sigma2, rho, delta), n_available)


def variance_curve(sigma2: float, rho: float, k_max: int, delta: float | None = None) -> list[dict[str, float]]:
    """Rows ``k, merged_variance, drop`` (drop from k-1 to k; NaN at k=1) and
    ``worth_adding`` (drop >= delta as :func:`n_max` compares, and drop > 0: an expert that lowers nothing is never worth
    adding, as :func:`n_max` counts with a zero Delta) for k = 1..k_max."""
    k_max = _check_n(k_max, "k_max")
    rows = []
    for k in range(1, k_max + 1):
        drop = variance_drop(sigma2, rho, k) if k >= 2 else float("nan")
        rows.append({
            "k": k,
            "merged_variance": uniform_merged_variance(sigma2, rho, k),
            "drop": drop,
            "worth_adding": bool(k == 1 or (delta is not None and drop > 0 and reaches_delta(drop, delta))),
        })
    return rows


def estimate_sigma_rho(task_vectors: torch.Tensor | list[torch.Tensor] | Iterable[torch.Tensor]) -> tuple[float, float, np.ndarray]:
    """Estimate ``(sigma2, rho, corr)`` from flattened task vectors.

    ``sigma2`` is the mean over experts of the variance of each expert's coordinates, ``rho``
    the mean off-diagonal Pearson correlation, ``corr`` the ``[n, n]`` correlation matrix.
    Accepts ``Tensor[n, d]``, a list of n flat tensors, or an iterator of per-key stacked tensors
    ``[n, *shape]``; the last streams, so the full vectors are never concatenated.
    """
    return sigma_rho_from_gram(gram_of(task_vectors))


def sigma_rho_from_gram(acc: GramAccumulator) -> tuple[float, float, np.ndarray]:
    """``(sigma2, rho, corr)`` from an already filled :class:`GramAccumulator`."""
    if acc.n < 2:
        raise ConfigError(f"estimating rho needs at least 2 experts, got {acc.n}")
    corr = acc.correlation()
    sigma2 = float(acc.variances().mean())
    n = corr.shape[0]
    return sigma2, float((corr.sum() - n) / (n * (n - 1))), corr
