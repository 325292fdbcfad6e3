"""The law's exponent grid is scored at once (closed form) and the fit is still, bit for bit, the
fit of solving every grid point one by one with least squares (the online rule and the report
replay it hundreds of times per run)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from evomerge.theory.scaling_law import ScalingFit, _grid_sse, _solve_linear, fit_scaling_law


def _fit_one_by_one(k, L, weights=None, b_bounds=(0.05, 4.0)) -> ScalingFit:
    """The fit as it was written before the grid was vectorised: every b solved with lstsq."""
    x, y = np.asarray(k, float), np.asarray(L, float)
    w = np.ones_like(x) if weights is None else np.asarray(weights, float)
    grid = np.geomspace(*b_bounds, 200)
    sse = [_solve_linear(x, y, w, b)[2] for b in grid]
    i = int(np.argmin(sse))
    a, c = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    res = minimize_scalar(lambda b: _solve_linear(x, y, w, b)[2], bounds=(a, c), method="bounded",
                          options={"xatol": 1e-10})
    b = float(res.x) if res.success and res.fun <= sse[i] else float(grid[i])
    l_inf, amp, err = _solve_linear(x, y, w, b)
    ybar = np.sum(w * y) / w.sum()
    sst = float(np.sum(w * (y - ybar) ** 2))
    return ScalingFit(L_inf=l_inf, A=amp, b=b, r2=float(1.0 - err / sst if sst > 0 else 1.0), n_points=int(x.size),
                      n_k=int(np.unique(x).size))


def _curves():
    rng = np.random.default_rng(7)
    for _ in range(150):
        ks = np.repeat(np.arange(1, rng.integers(4, 11) + 1), rng.integers(1, 4))
        L_inf, A, b = rng.uniform(-0.9, 0.5), rng.uniform(-0.3, 0.6), rng.uniform(0.02, 6.0)
        noise = rng.choice([0.0, 1e-4, 1e-2, 0.05])
        y = L_inf + A / ks**b + rng.normal(0, noise, ks.size)
        if rng.random() < 0.15:  # a curve that turns: rises again past a peak
            y = y + rng.uniform(0.005, 0.05) * np.maximum(0, ks - rng.integers(2, 6))
        yield ks, y, (rng.uniform(0.1, 5.0, ks.size) if rng.random() < 0.3 else None)
    yield np.array([1, 2, 3, 4.0]), np.full(4, -0.5), None  # flat: every b fits equally
    yield np.array([2, 3, 4, 2, 3, 4.0]), np.array([-0.5, -0.6, -0.62, -0.51, -0.59, -0.63]), None


def test_grid_closed_form_matches_lstsq():
    x, y, w = np.array([1, 2, 3, 5, 8.0]), np.array([0.9, 0.6, 0.52, 0.47, 0.44]), np.array([1, 2, 1, 0.5, 1.0])
    grid = np.geomspace(0.05, 4.0, 200)
    one_by_one = np.array([_solve_linear(x, y, w, b)[2] for b in grid])
    assert np.allclose(_grid_sse(x, y, w, grid), one_by_one, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("i", range(152))
def test_fit_is_the_one_by_one_fit(i):
    k, L, w = list(_curves())[i]
    assert fit_scaling_law(k, L, w) == _fit_one_by_one(k, L, w)  # every field, exactly
