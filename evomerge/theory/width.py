"""Theorems 2 and 3: Gaussian width of the low-loss region and the redundancy threshold.

Near an optimum the loss sublevel set ``{x : x^T H x / 2 <= eps}`` is an ellipsoid whose
Gaussian width ``w(S) = E sup_{x in S} <g, x>`` is about ``sqrt(2 eps Tr(H^-1))``. With M
experts spanning the M flattest curvature directions the reachable width is
``sqrt(2 eps sum_{i<=M} 1/lambda_i)`` (eigenvalues in ascending order): a concave curve,
so each extra expert adds less.
"""

from __future__ import annotations

import numpy as np
import torch

from evomerge.errors import ConfigError


def _eigs(eigvals) -> np.ndarray:
    lam = np.asarray(eigvals, dtype=np.float64).ravel()
    if lam.size == 0 or not np.all(np.isfinite(lam)) or np.any(lam <= 0):
        raise ConfigError("Hessian eigenvalues must be finite and > 0 (a positive definite curvature)")
    return lam


def _eps(eps: float) -> float:
    if not eps > 0:
        raise ConfigError(f"eps (the loss tolerance) must be > 0, got {eps}")
    return float(eps)


def gaussian_width_mc(points: torch.Tensor, n_samples: int, generator: torch.Generator) -> float:
    """Monte-Carlo Gaussian width of a finite set ``points[m, d]``: ``mean_g max_x <g, x>``."""
    if points.ndim != 2 or points.shape[0] == 0:
        raise ConfigError(f"points must be a non-empty [m, d] matrix, got shape {tuple(points.shape)}")
    p = points.to(torch.float64)
    g = torch.randn(n_samples, p.shape[1], generator=generator, dtype=torch.float64)
    return float((g @ p.T).max(dim=1).values.mean())


def ellipsoid_width_mc(eigvals, eps: float, n_samples: int, generator: torch.Generator) -> float:
    """Monte-Carlo width of ``{x : x^T H x <= 2 eps}`` (H diagonal in its eigenbasis):
    ``sup_x <g, x> = sqrt(2 eps g^T H^-1 g)``."""
    lam = torch.as_tensor(_eigs(eigvals))
    g = torch.randn(n_samples, lam.numel(), generator=generator, dtype=torch.float64)
    return float(torch.sqrt(2 * _eps(eps) * (g * g / lam).sum(dim=1)).mean())


def ellipsoid_width(eigvals, eps: float) -> float:
    """Closed form ``sqrt(2 eps Tr(H^-1))`` (an upper bound on the exact width, tight for large d)."""
    return float(np.sqrt(2 * _eps(eps) * np.sum(1.0 / _eigs(eigvals))))


def width_curve(eigvals, eps: float) -> np.ndarray:
    """``w(M) = sqrt(2 eps sum_{i<=M} 1/lambda_i)`` for M = 1..d, eigenvalues ascending."""
    lam = np.sort(_eigs(eigvals))
    return np.sqrt(2 * _eps(eps) * np.cumsum(1.0 / lam))


def redundancy_rhs(eigvals, eps: float, dist2: float, k: int) -> float:
    """Right side of Theorem 3: ``d - sum_{i=1}^{d-k} r_i^2 / (dist2 + r_i^2)``,
    ``r_i^2 = 2 eps / lambda_i`` (eigenvalues ascending), ``dist2 = ||theta* - theta^k||^2``."""
    lam = np.sort(_eigs(eigvals))
    d = lam.size
    if not 0 <= k <= d:
        raise ConfigError(f"k must be in [0, {d}] (the dimension), got {k}")
    if dist2 < 0:
        raise ConfigError(f"dist2 must be >= 0, got {dist2}")
    r2 = 2 * _eps(eps) / lam[: d - k]
    return float(d - np.sum(r2 / (dist2 + r2)))


def redundancy_threshold(eigvals, eps: float, dist2: float) -> float:
    """Effective number of non-redundant directions, ``sum_i dist2 / (dist2 + r_i^2)``.

    This is :func:`redundancy_rhs` at k = 0. As written, Theorem 3's inequality
    ``k <= rhs(k)`` holds for every k (each summand is < 1, so ``rhs(k) >= k``); the informative
    quantity is the sum itself: a curvature direction counts fully when the remaining distance
    to the optimum dominates its flatness radius ``r_i`` and not at all when the loss is flat
    there. Experts beyond this count add directions that cannot lower the loss (evomerge's
    reading of the theorem, used as a diagnostic only).
    """
    return redundancy_rhs(eigvals, eps, dist2, 0)
