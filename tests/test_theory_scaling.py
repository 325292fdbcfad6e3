"""Scaling-law fit L(k) = L_inf + A / k^b on noisy synthetic curves."""

from __future__ import annotations

import numpy as np
import pytest

from evomerge.errors import ConfigError
from evomerge.theory import ScalingFit, fit_fitness_scaling, fit_scaling_law


@pytest.mark.parametrize("true", [(2.0, 1.5, 1.0), (0.4, 0.8, 0.5), (1.1, 3.0, 2.0)])
def test_fit_recovers_parameters_from_noisy_curve(true):
    l_inf, amp, b = true
    rng = np.random.default_rng(0)
    k = np.repeat(np.arange(1, 17), 3)  # 3 seeds per k
    y = l_inf + amp / k**b + rng.normal(0, 0.003, size=k.size)
    fit = fit_scaling_law(k, y)
    assert fit.L_inf == pytest.approx(l_inf, abs=0.02)
    assert fit.A == pytest.approx(amp, rel=0.03)
    assert fit.b == pytest.approx(b, rel=0.05)
    assert fit.r2 > 0.99
    assert fit.n_points == k.size


def test_fit_exact_data_and_weights():
    k = np.arange(1, 11)
    y = 1.0 + 2.0 / k**0.7
    fit = fit_scaling_law(k, y)
    assert (fit.L_inf, fit.A, fit.b) == pytest.approx((1.0, 2.0, 0.7), rel=1e-5)
    # an outlier with zero weight does not move the fit
    y2 = y.copy()
    y2[4] += 5.0
    w = np.ones_like(y2)
    w[4] = 0.0
    fit2 = fit_scaling_law(k, y2, weights=w)
    assert (fit2.L_inf, fit2.A, fit2.b) == pytest.approx((1.0, 2.0, 0.7), rel=1e-5)


def test_k_for_target_and_marginal_by_hand():
    fit = ScalingFit(L_inf=1.0, A=2.0, b=1.0, r2=1.0, n_points=0)
    # L(k) = 1 + 2/k <= 1.25  <=>  k >= 8
    assert fit.k_for_target(1.25) == 8
    assert fit.k_for_target(1.2501) == 8
    assert fit.k_for_target(1.2499) == 9
    assert fit.k_for_target(5.0) == 1
    assert fit.k_for_target(1.0) is None  # the floor is never reached
    # L(k) - L(k+1) = 2/(k(k+1)) < 0.1  <=>  k(k+1) > 20  <=>  k >= 5 (4*5 = 20 is not > 20)
    assert fit.k_marginal_below(0.1) == 5
    assert fit.k_marginal_below(2.0) == 1  # 2/(1*2) = 1 < 2
    assert fit.k_marginal_below(1.0) == 2
    assert fit.predict(2) == pytest.approx(2.0)
    np.testing.assert_allclose(fit.predict(np.array([1, 4])), [3.0, 1.5])


def test_marginal_below_agrees_with_a_scan_up_to_k_max():
    """Against a plain scan of k = 1..k_max: an answer between the last power of two and k_max
    (9 with k_max 10) is found, and none beyond k_max is returned."""
    # by hand: 2/(k(k+1)) < 0.025 <=> k(k+1) > 80 <=> k >= 9 (8*9 = 72)
    fit = ScalingFit(L_inf=1.0, A=2.0, b=1.0, r2=1.0, n_points=0)
    assert fit.k_marginal_below(0.025, k_max=10) == 9
    assert fit.k_marginal_below(0.025, k_max=9) == 9
    assert fit.k_marginal_below(0.025, k_max=8) is None
    assert fit.k_marginal_below(1.0, k_max=1) is None and fit.k_marginal_below(2.0, k_max=1) == 1
    rng = np.random.default_rng(3)
    for _ in range(300):
        fit = ScalingFit(L_inf=0.5, A=float(rng.uniform(0.01, 3)), b=float(rng.uniform(0.05, 4)), r2=1.0, n_points=0)
        tol, k_max = float(10 ** rng.uniform(-5, -0.5)), int(rng.integers(1, 40))
        scan = next((k for k in range(1, k_max + 1) if fit.predict(k) - fit.predict(k + 1) < tol), None)
        assert fit.k_marginal_below(tol, k_max=k_max) == scan, (fit, tol, k_max)


def test_fitness_curve_one_minus():
    k = np.arange(1, 13)
    fitness = 0.8 - 0.3 / k**1.2
    fit = fit_fitness_scaling(k, fitness)
    assert fit.transform == "one_minus"
    assert fit.L_inf == pytest.approx(0.2, abs=1e-6)
    assert fit.predict_fitness(6) == pytest.approx(0.8 - 0.3 / 6**1.2, abs=1e-6)
    assert fit.k_for_target(1 - 0.75) == int(np.ceil((0.3 / 0.05) ** (1 / 1.2)))
    neg = fit_fitness_scaling(k, fitness, transform="negate")
    assert neg.predict_fitness(6) == pytest.approx(0.8 - 0.3 / 6**1.2, abs=1e-6)


def test_fit_validation():
    with pytest.raises(ConfigError, match="3 distinct"):
        fit_scaling_law([1, 1, 2], [1.0, 1.1, 0.9])
    with pytest.raises(ConfigError, match="same length"):
        fit_scaling_law([1, 2, 3], [1.0])


def test_report_reading_of_fits():
    """The report's words for a fit: a loss falling as 1 + 2/k 'falls'; one growing with k
    'rises'; a curve that drops at once and is flat after (best b beyond the range) has b at
    its bound."""
    from evomerge.pipelines.scale.report_md import fit_reading
    from evomerge.theory.scaling_law import B_BOUNDS

    k = np.arange(1, 9, dtype=float)

    def reading(y):
        f = fit_scaling_law(k, y)
        return fit_reading({"A": f.A, "b": f.b, "r2": f.r2, "n_params": f.n_params})

    assert reading(1 + 2 / k) == "falls"
    assert reading(1 + 0.1 * k).startswith("rises")
    flat = np.where(k == 1, 2.0, 1.0)  # all the gain at the second expert: a step, b -> infinity
    assert fit_scaling_law(k, flat).b == pytest.approx(B_BOUNDS[1])
    assert "b at bound" in reading(flat)
    assert fit_reading({"A": 0.3, "b": 1.0, "r2": 0.2}) == "falls, poor fit"


def test_report_prints_a_mean_k_to_two_decimals():
    """A measured peak is a mean over seeds: 3.67, not 3.66667; whole k as integers."""
    from evomerge.pipelines.scale.report_md import _k

    assert [_k(v) for v in (11 / 3, 4.0, 10.0, 3, 2.5, float("nan"), None)] == ["3.67", "4", "10", "3", "2.5", "n/a", "n/a"]
