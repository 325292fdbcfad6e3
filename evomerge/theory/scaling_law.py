"""Fit ``L(k) = L_inf + A / k^b`` to a loss-like quantity measured at k merged experts.

The fit is for a quantity that *falls* with k (cross-entropy, error rate). For a fitness that
rises (accuracy), fit ``1 - fitness`` or ``-fitness`` with :func:`fit_fitness_scaling`, which
records the transform so :meth:`ScalingFit.predict_fitness` maps predictions back.

Method: for each exponent b on a grid (then refined by a bounded scalar search) the model is
linear in ``(L_inf, A)``, solved by weighted least squares; the b with the smallest residual
wins (the grid is scored at once in closed form; the few points within rounding of its
minimum are solved one by one, so the choice is that of solving every point one by one). This has no starting-point sensitivity, unlike a joint nonlinear fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
from scipy.optimize import minimize_scalar

from evomerge.errors import ConfigError

Transform = Literal["loss", "one_minus", "negate"]


B_BOUNDS = (0.05, 4.0)  # the exponent b is fitted within these (a fit at either end: the law's shape is not pinned down)


@dataclass(frozen=True)
class ScalingFit:
    L_inf: float
    A: float
    b: float
    r2: float
    n_points: int
    transform: Transform = "loss"
    n_k: int = 0  # distinct k among the points (seeds repeat a k)
    n_params: int = 3  # parameters fitted: 3, or 2 with the exponent held fixed

    def predict(self, k) -> np.ndarray | float:
        """Fitted loss-like value at k (scalar in, scalar out)."""
        k_arr = np.asarray(k, dtype=np.float64)
        out = self.L_inf + self.A / np.power(k_arr, self.b)
        return float(out) if out.ndim == 0 else out

    def predict_fitness(self, k) -> np.ndarray | float:
        """Prediction mapped back through the fitted transform (identity for ``loss``)."""
        return _untransform(self.predict(k), self.transform)

    def k_for_target(self, target: float, k_max: int = 10**9) -> int | None:
        """Smallest integer k >= 1 with ``predict(k) <= target`` (in loss space), or None when
        the curve never gets there (target at or below the floor ``L_inf``, or A <= 0)."""
        if self.predict(1) <= target:
            return 1
        if self.A <= 0 or self.b <= 0 or target <= self.L_inf:
            return None
        k_real = (self.A / (target - self.L_inf)) ** (1.0 / self.b)
        if not math.isfinite(k_real) or k_real > k_max:
            return None
        k = max(1, math.ceil(k_real - 1e-9))
        while k > 1 and self.predict(k - 1) <= target:  # guard rounding both ways
            k -= 1
        while self.predict(k) > target:
            k += 1
        return k

    def k_marginal_below(self, tol: float, k_max: int = 10**9) -> int | None:
        """Smallest integer k >= 1 where adding one expert gains less than ``tol``:
        ``predict(k) - predict(k + 1) < tol``. None if not reached by ``k_max``."""
        if tol <= 0:
            raise ConfigError(f"tol must be > 0, got {tol}")

        def gain(k: int) -> float:
            return self.predict(k) - self.predict(k + 1)

        if gain(1) < tol:
            return 1
        # the gain is decreasing in k when A > 0, b > 0: bracket (doubling, capped at k_max, so
        # an answer between the last power of two and k_max is found) then bisect
        lo, hi = 1, 2  # gain(lo) >= tol
        while hi <= k_max and gain(hi) >= tol:
            if hi == k_max:
                return None
            lo, hi = hi, min(2 * hi, k_max)
        if hi > k_max:
            return None
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if gain(mid) >= tol:
                lo = mid
            else:
                hi = mid
        return hi


def _transform(y: np.ndarray, transform: Transform) -> np.ndarray:
    if transform == "loss":
        return y
    if transform == "one_minus":
        return 1.0 - y
    if transform == "negate":
        return -y
    raise ConfigError(f"transform must be 'loss', 'one_minus' or 'negate', got {transform!r}")


def _untransform(y, transform: Transform):
    return _transform(y, transform)  # each transform is its own inverse


def _solve_linear(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: float) -> tuple[float, float, float]:
    """Weighted LS for (L_inf, A) at fixed b; returns (L_inf, A, weighted SSE)."""
    design = np.stack([np.ones_like(x), x**-b], axis=1)
    sw = np.sqrt(w)
    coef, *_ = np.linalg.lstsq(design * sw[:, None], y * sw, rcond=None)
    resid = y - design @ coef
    return float(coef[0]), float(coef[1]), float(np.sum(w * resid * resid))


def _grid_sse(x: np.ndarray, y: np.ndarray, w: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """:func:`_solve_linear`'s weighted SSE at every b of ``grid`` at once (closed form of the
    two-parameter weighted least squares; equal to it up to rounding)."""
    z = x[None, :] ** -grid[:, None]  # (grid, points)
    sw = w.sum()
    zbar = (z @ w) / sw
    ybar = float(w @ y) / sw
    zc, yc = z - zbar[:, None], y - ybar
    szz = (zc * zc) @ w
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(szz > 0, ((zc * yc) @ w) / szz, 0.0)
    resid = yc[None, :] - slope[:, None] * zc
    return (resid * resid) @ w


def _grid_argmin(x: np.ndarray, y: np.ndarray, w: np.ndarray, grid: np.ndarray) -> tuple[int, float]:
    """``(i, sse_i)``: the first grid index of the smallest :func:`_solve_linear` SSE, and that SSE.
    The whole grid is scored at once; only the points within rounding of the smallest are then
    solved one by one, so the choice is the one-by-one loop's, bit for bit."""
    approx = _grid_sse(x, y, w, grid)
    slack = 1e-10 * float(np.sum(w * y * y)) + 1e-300  # far above the closed form's rounding
    near = np.flatnonzero(~(approx > approx.min() + slack))  # NaN stays a candidate
    exact = [_solve_linear(x, y, w, grid[j])[2] for j in near]
    j = int(np.argmin(exact))
    return int(near[j]), exact[j]


def fit_scaling_law(
    k: Sequence[float],
    L: Sequence[float],
    weights: Sequence[float] | None = None,
    *,
    b_bounds: tuple[float, float] = B_BOUNDS,
    transform: Transform = "loss",
    b_fixed: float | None = None,
) -> ScalingFit:
    """Fit ``L(k) = L_inf + A / k^b``; repeated k (several seeds) are fine.

    ``weights`` are per-point least-squares weights (e.g. 1 / variance across seeds).
    ``r2`` is the weighted coefficient of determination. ``b_fixed``: hold the exponent there
    and fit ``L_inf, A`` only (two parameters: two distinct k suffice).
    """
    x = np.asarray(k, dtype=np.float64).ravel()
    y = np.asarray(L, dtype=np.float64).ravel()
    if x.size != y.size:
        raise ConfigError(f"k and L must have the same length, got {x.size} and {y.size}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ConfigError("k and L must be finite")
    if np.any(x <= 0):
        raise ConfigError("k (number of experts) must be > 0")
    need = 2 if b_fixed is not None else 3
    if np.unique(x).size < need:
        raise ConfigError(f"need at least {need} distinct k to fit the law's {need} parameters; got {np.unique(x).size}")
    if b_fixed is not None and not (math.isfinite(b_fixed) and b_fixed > 0):
        raise ConfigError(f"b_fixed must be > 0, got {b_fixed!r}")
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if w.size != x.size or np.any(~np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ConfigError("weights must be finite, >= 0, not all zero, one per point")
    lo, hi = b_bounds
    if not 0 < lo < hi:
        raise ConfigError(f"b_bounds must satisfy 0 < low < high, got {b_bounds}")

    if b_fixed is not None:
        b = float(b_fixed)
    else:
        grid = np.geomspace(lo, hi, 200)
        i, sse_i = _grid_argmin(x, y, w, grid)
        a, c = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
        res = minimize_scalar(lambda b: _solve_linear(x, y, w, b)[2], bounds=(a, c), method="bounded",
                              options={"xatol": 1e-10})
        b = float(res.x) if res.success and res.fun <= sse_i else float(grid[i])
    l_inf, amp, err = _solve_linear(x, y, w, b)
    ybar = np.sum(w * y) / w.sum()
    sst = float(np.sum(w * (y - ybar) ** 2))
    r2 = 1.0 - err / sst if sst > 0 else 1.0
    return ScalingFit(L_inf=l_inf, A=amp, b=b, r2=float(r2), n_points=int(x.size), transform=transform,
                      n_k=int(np.unique(x).size), n_params=2 if b_fixed is not None else 3)


def fit_fitness_scaling(
    k: Sequence[float], fitness: Sequence[float], weights: Sequence[float] | None = None,
    *, transform: Literal["one_minus", "negate"] = "one_minus", b_bounds: tuple[float, float] = B_BOUNDS,
) -> ScalingFit:
    """Fit a rising fitness curve by fitting the loss-like ``1 - fitness`` (for scores in
    [0, 1]) or ``-fitness``. ``k_for_target`` and ``predict`` then work in that loss space;
    use ``predict_fitness`` for fitness values and pass targets as ``1 - f`` / ``-f``."""
    y = _transform(np.asarray(fitness, dtype=np.float64), transform)
    return fit_scaling_law(k, y, weights, b_bounds=b_bounds, transform=transform)
