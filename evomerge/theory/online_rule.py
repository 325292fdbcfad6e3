"""Stop rules read off a measured curve: evomerge's online rule and the law fitted on the first k.

Both work on a *loss* measured at k merged experts (cross-entropy, or minus a task metric) and
the scaling law ``L(k) = L_inf + A / k^b`` (:mod:`evomerge.theory.scaling_law`). A gain is a
fall of the loss; ``tol`` is an absolute gain (the caller scales it, e.g. to a fraction of
the first expert's gain over the base model: :func:`online_tolerance`).

* Online rule: after each measured k from the second grid point on, predict the gain of the
  next expert: with two points, from the law with its exponent fixed at ``b = 1`` (Theorem 1's
  ``1/k`` fall of the merged variance: two points fix ``L_inf`` and ``A``); from three points
  on, from the law fitted to all points so far. Stop at k when that predicted gain AND the
  measured gain per expert over the last ``window`` grid steps are both below ``tol``, or when
  the curve has turned: the loss rose by more than ``tol`` per expert on the last grid step
  (``turn``; the law is monotone, so fitted to a curve that has turned it still predicts a
  gain and the rule would run on past the peak). So the
  rule can stop at the second point when the data say the second expert did not help (a
  curve that peaks at its first k); a curve that keeps rising keeps one of them above ``tol``
  and the rule does not fire; a flat curve fires at the second point (no later "peak" is
  invented), and its "keeps" is the first k.
* Law on the first m: fit on k <= m only and predict where one more expert gains < ``tol``
  (the peak, predicted before the rest is run); its tolerance may know the evaluation noise
  (:func:`law_tolerance`: at least z standard errors of a measured one-step difference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from evomerge.errors import ConfigError, EvomergeError
from evomerge.theory.scaling_law import B_BOUNDS, ScalingFit, fit_scaling_law


def gain_scale(first: float, base: float | None) -> float:
    """``|first - base|``: the first point's gain over the base model (0 when unknown)."""
    if base is None or not (math.isfinite(first) and math.isfinite(base)):
        return 0.0
    return abs(first - base)


def online_tolerance(fraction: float, first: Sequence[float], base: float | None) -> float:
    """The online rule's and the law's tolerance (``scale.online_tol``): ``fraction`` of the
    gain of the curve's first k over the base model; ``first`` holds that k's values (one per
    seed, averaged). The search driver (each search's own curve) and the report (the measured
    curves) both call this."""
    vals = np.asarray(first, dtype=np.float64).ravel()
    mean = float(vals.mean()) if vals.size else math.nan
    return fraction * gain_scale(mean, base)


def _means(ks: Sequence[float], losses: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(ks, dtype=np.float64).ravel()
    y = np.asarray(losses, dtype=np.float64).ravel()
    if x.size != y.size:
        raise ConfigError(f"k and loss must have the same length, got {x.size} and {y.size}")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    grid = np.unique(x)
    return grid, np.array([y[x == k].mean() for k in grid])


def _fit(ks: np.ndarray, losses: np.ndarray) -> ScalingFit | None:
    try:
        return fit_scaling_law(ks, losses)
    except EvomergeError:
        return None


@dataclass(frozen=True)
class OnlineFire:
    fired: bool
    fired_k: int  # the k at which the rule stopped (the last k measured when it never fired)
    best_k: int  # the best measured k up to fired_k: what the rule's user would keep
    tol: float
    fit: ScalingFit | None  # the fit at the firing point (or on all points)
    steps: list[dict] = field(default_factory=list)  # per k looked at: predicted and measured gain


TWO_POINT_B = 1.0  # exponent of the two-point prediction: Theorem 1's 1/k
LAW_B: float | None = None  # the law on the first m k: exponent held fixed (None: fitted)
# Consecutive grid steps on which the loss rose by more than tol per expert that stop the rule
# whatever the law predicts (0: off). 1 was chosen on synthetic curves only
# (benchmarks/online_rule_synthetic.py, docs/scale.md), never on a run's numbers.
TURN_STEPS = 1


def two_point_gain(k0: float, l0: float, k1: float, l1: float, nxt: float, b: float = TWO_POINT_B) -> float:
    """Gain per expert from ``k1`` to ``nxt`` predicted by ``L_inf + A / k^b`` through the two
    points ``(k0, l0)``, ``(k1, l1)`` with ``b`` fixed (a loss that rose predicts a loss)."""
    amp = (l0 - l1) / (k0**-b - k1**-b)
    return float(amp * (k1**-b - nxt**-b) / (nxt - k1))


def online_stop(ks: Sequence[float], losses: Sequence[float], *, tol: float, window: int = 1,
                min_points: int = 2, turn: int = TURN_STEPS) -> OnlineFire:
    """Replay the online rule over a measured curve (repeated k = seeds; their mean is the curve).
    ``min_points``: the first number of distinct k the rule looks at (2: the two-point
    prediction; 3: the fitted law only). ``turn``: the rule also stops once the loss rose by
    more than ``tol`` per expert on each of the last ``turn`` grid steps (0: never): the law is
    monotone and cannot see a curve that has turned, so its predicted gain stays positive
    there."""
    if not math.isfinite(tol) or tol < 0:
        raise ConfigError(f"the online rule's tolerance must be >= 0. Got {tol!r} instead.")
    if window < 1:
        raise ConfigError(f"`scale.online_window` must be >= 1. Got {window!r} instead.")
    if min_points < 2:
        raise ConfigError(f"the online rule needs a measured gain: min_points must be >= 2, got {min_points}")
    if turn < 0:
        raise ConfigError(f"the online rule's `turn` must be >= 0 (0: off). Got {turn!r} instead.")
    x_all = np.asarray(ks, dtype=np.float64).ravel()
    y_all = np.asarray(losses, dtype=np.float64).ravel()
    grid, mean = _means(x_all, y_all)
    if grid.size < min_points:
        raise ConfigError(f"the online rule needs at least {min_points} distinct k; got {grid.size}")
    steps: list[dict] = []
    fit = None
    for j in range(min_points - 1, grid.size):
        k = grid[j]
        nxt = grid[j + 1] if j + 1 < grid.size else k + (k - grid[j - 1])
        if j == 1:
            predicted = two_point_gain(grid[0], mean[0], k, mean[1], nxt)
        else:
            use = x_all <= k
            fit = _fit(x_all[use], y_all[use])
            predicted = (fit.predict(k) - fit.predict(nxt)) / (nxt - k) if fit is not None else float("inf")
        back = max(0, j - window)
        measured = (mean[back] - mean[j]) / (k - grid[back])
        turned = turn > 0 and j >= turn and all(
            (mean[i - 1] - mean[i]) / (grid[i] - grid[i - 1]) < -tol for i in range(j - turn + 1, j + 1))
        steps.append({"k": int(k), "predicted_gain": float(predicted), "measured_gain": float(measured),
                      "turned": bool(turned)})
        if (predicted < tol and measured < tol) or turned:
            return OnlineFire(True, int(k), _best(grid, mean, j), float(tol), fit, steps)
    return OnlineFire(False, int(grid[-1]), _best(grid, mean, grid.size - 1), float(tol), fit, steps)


def _best(grid: np.ndarray, mean: np.ndarray, j: int) -> int:
    """The k of the lowest mean loss among the first j+1 grid points (ties: smallest k)."""
    return int(grid[int(np.argmin(mean[: j + 1]))])


@dataclass(frozen=True)
class LawPeak:
    predicted_k: int  # first k where one more expert gains < tol (capped at k_cap)
    beyond: bool  # True when the law still gains >= tol at k_cap
    fit: ScalingFit


def law_peak(ks: Sequence[float], losses: Sequence[float], *, m: int, tol: float, k_cap: int,
             b_fixed: float | None = LAW_B, b_bounds: tuple[float, float] = B_BOUNDS) -> LawPeak:
    """Fit the law on the points with k <= m; the predicted peak is the first k whose next expert
    gains less than ``tol`` (a fit whose loss does not fall predicts the smallest measured k).
    ``b_fixed``: the exponent held there (``L_inf, A`` fitted); None: fitted within ``b_bounds``."""
    if m < 3:
        raise ConfigError(f"`scale.law_first_k` must be >= 3 (the law has 3 parameters). Got {m!r} instead.")
    if not tol > 0:
        raise ConfigError(f"the law's tolerance must be > 0. Got {tol!r} instead.")
    x = np.asarray(ks, dtype=np.float64).ravel()
    y = np.asarray(losses, dtype=np.float64).ravel()
    use = np.isfinite(x) & np.isfinite(y) & (x <= m)
    if np.unique(x[use]).size < 3:
        raise ConfigError(f"the law on k <= {m} needs 3 distinct k there; got {np.unique(x[use]).size}")
    fit = fit_scaling_law(x[use], y[use], b_fixed=b_fixed, b_bounds=b_bounds)
    return peak_from_fit(fit, tol=tol, k_cap=k_cap, k_min=int(x[use].min()))


def peak_from_fit(fit: ScalingFit, *, tol: float, k_cap: int, k_min: int = 1) -> LawPeak:
    """The law's predicted peak from a fit already made: the first k whose next expert gains less
    than ``tol``, within ``[k_min, k_cap]`` (:func:`law_peak` after its fit; one fit can be read
    at several tolerances)."""
    if not tol > 0:
        raise ConfigError(f"the law's tolerance must be > 0. Got {tol!r} instead.")
    k = fit.k_marginal_below(tol, k_max=k_cap)
    if k is None:
        return LawPeak(int(k_cap), True, fit)
    return LawPeak(int(min(max(k, k_min), k_cap)), False, fit)


# How the law's noise tolerance combines the standard errors of the consecutive steps on k <= m
# (:func:`step_se`); chosen on synthetic curves only (benchmarks/law_noise_synthetic.py).
STEP_SE = "rms"


def step_se(ses: Sequence[float], how: str = STEP_SE) -> float:
    """One standard error of a one-step paired difference from those of the consecutive measured
    steps on k <= m: ``rms`` (root mean square over the steps) or ``last`` (the step ending at
    the largest k). NaN when there is none (no per-example scores)."""
    v = np.asarray(ses, dtype=np.float64).ravel()
    if how not in ("rms", "last"):
        raise ConfigError(f"step_se: `how` must be 'rms' or 'last', got {how!r}")
    if v.size == 0 or not np.isfinite(v).all():
        return math.nan
    return float(np.sqrt(np.mean(v**2))) if how == "rms" else float(v[-1])


def law_tolerance(tol: float, se: float, z: float) -> float:
    """The law's tolerance with the evaluation noise: ``max(tol, z x se)`` (``tol``: the online
    rule's, a fraction of the first gain; ``se``: :func:`step_se`). ``z`` = 0 or an unknown SE
    (NaN: a run without per-example scores) gives ``tol`` unchanged: the rule before. A
    predicted gain of one more expert smaller than z standard errors of a measured one-step
    difference is one the evaluation could not tell from none."""
    if not math.isfinite(z) or z < 0:
        raise ConfigError(f"`scale.law_noise_z` must be a number >= 0 (0: off). Got {z!r} instead.")
    if z == 0 or not math.isfinite(se):
        return float(tol)
    if se < 0:
        raise ConfigError(f"a standard error must be >= 0, got {se!r}")
    return float(max(tol, z * se))
