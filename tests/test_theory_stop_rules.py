"""Theorem 1's general form (eq. 18) against Monte-Carlo, its Delta modes, the online rule on
synthetic curves with known peaks, and the law fitted on the first k."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evomerge.errors import ConfigError
from evomerge.theory import estimate_sigma_rho, gram_of, n_max
from evomerge.theory.general_variance import (
    covariance_from, delta_for, general_merged_variance, general_variance_curve, theorem1_stop,
)
from evomerge.theory.online_rule import law_peak, online_stop

# 5 experts with unequal variances and an uneven correlation structure (positive definite)
S2 = np.array([1.0, 0.25, 2.0, 0.5, 1.5])
RHO = np.array([
    [1.0, 0.6, 0.1, -0.2, 0.3],
    [0.6, 1.0, 0.2, 0.0, 0.1],
    [0.1, 0.2, 1.0, 0.4, -0.1],
    [-0.2, 0.0, 0.4, 1.0, 0.25],
    [0.3, 0.1, -0.1, 0.25, 1.0],
])


def _sample(cov: np.ndarray, d: int, seed: int) -> torch.Tensor:
    """d coordinates of n experts drawn jointly Gaussian with covariance ``cov`` (experts x experts)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(cov.shape[0], d, generator=g, dtype=torch.float64)
    return torch.from_numpy(np.linalg.cholesky(cov)) @ z


def test_eq18_matches_monte_carlo_with_unequal_sigmas_and_rhos():
    cov = covariance_from(S2, RHO)
    assert np.all(np.linalg.eigvalsh(cov) > 0)
    x = _sample(cov, 400_000, 0)
    for subset, w in [([2, 0, 4], [0.5, 0.3, 0.2]), ([0, 1, 2, 3, 4], [0.2] * 5), ([3, 1], [1.0, 1.0])]:
        merged = (torch.tensor(w, dtype=torch.float64)[:, None] * x[subset]).sum(0)
        mc = float(merged.var())
        assert general_merged_variance(cov, subset, w) == pytest.approx(mc, rel=0.01)
    # the estimator recovers the per-expert variances and the correlation matrix the formula uses
    acc = gram_of(x)
    np.testing.assert_allclose(acc.variances(), S2, rtol=0.01)
    np.testing.assert_allclose(acc.correlation(), RHO, atol=0.01)


def test_curve_follows_the_order_and_weights():
    cov = covariance_from(S2, RHO)
    order = [3, 1, 4, 0, 2]
    uni = general_variance_curve(cov, order)
    # k = 2 by hand: a = (1/2, 1/2) over experts 3 and 1
    hand = 0.25 * S2[3] + 0.25 * S2[1] + 2 * 0.25 * RHO[3, 1] * math.sqrt(S2[3] * S2[1])
    assert uni[1] == pytest.approx(hand)
    assert uni[0] == pytest.approx(S2[3])
    other = general_variance_curve(cov, list(reversed(order)))
    assert other[1] != pytest.approx(uni[1])  # the order matters
    summed = general_variance_curve(cov, order, lambda k: np.ones(k))  # task arithmetic (lambda 1)
    assert summed[1] > summed[0]  # a sum adds variance: the drop is negative
    fire = theorem1_stop(summed, 1e-6)
    assert fire.fired and fire.fired_k == 1


def test_equicorrelated_case_reduces_to_the_closed_form_and_adaptive_is_sqrt_n():
    for n, sigma2, rho in [(10, 0.3, 0.2), (12, 1.0, 0.05), (36, 0.01, 0.5)]:
        corr = np.full((n, n), rho)
        np.fill_diagonal(corr, 1.0)
        curve = general_variance_curve(covariance_from(np.full(n, sigma2), corr), list(range(n)))
        np.testing.assert_allclose(curve, [sigma2 * (rho + (1 - rho) / k) for k in range(1, n + 1)])
        delta = 0.037 * sigma2 * (1 - rho)  # on no boundary 1 / (n (n - 1))
        assert theorem1_stop(curve, delta).fired_k == n_max(sigma2, rho, delta)
        # the paper's adaptive Delta: sigma^2 and rho cancel, n_max = floor(sqrt(N + 1/4) + 1/2)
        adaptive = delta_for(curve, "adaptive")
        assert adaptive == pytest.approx(sigma2 * (1 - rho) / n)
        assert theorem1_stop(curve, adaptive).fired_k == math.floor(math.sqrt(n + 0.25) + 0.5)


def test_general_rule_depends_on_the_data():
    """Same N, same mean sigma^2 and rho, different structure -> a different fired k."""
    n = 10
    corr = np.full((n, n), 0.1)
    np.fill_diagonal(corr, 1.0)
    equal = general_variance_curve(covariance_from(np.full(n, 1.0), corr), list(range(n)))
    unequal_s2 = np.array([4.0] + [1.0 / 3] * 9)  # same mean variance: 1.0
    unequal = general_variance_curve(covariance_from(unequal_s2, corr), list(range(n)))
    d_eq, d_un = delta_for(equal, "relative", 0.05), delta_for(unequal, "relative", 0.05)
    assert theorem1_stop(equal, d_eq).fired_k != theorem1_stop(unequal, d_un).fired_k


def test_relative_delta_is_a_fraction_of_the_first_drop():
    curve = [1.0, 0.6, 0.45, 0.4, 0.38]
    assert delta_for(curve, "relative", 0.25) == pytest.approx(0.1)
    # drops 0.4, 0.15, 0.05, 0.02 -> the third (0.05) is the first < 0.1: keep 3 experts
    fire = theorem1_stop(curve, 0.1)
    assert fire.fired and fire.fired_k == 3
    assert not theorem1_stop(curve, 0.01).fired and theorem1_stop(curve, 0.01).fired_k == 5


@pytest.mark.parametrize("mode,value,match", [
    ("fixed", 0.0, "scale.delta"), ("fixed", -1.0, "scale.delta"), ("relative", 1.0, "delta_fraction"),
    ("relative", 0.0, "delta_fraction"), ("relative", 1.5, "delta_fraction"), ("bogus", 0.1, "fixed, relative"),
])
def test_bad_delta_is_refused_naming_the_key(mode, value, match):
    with pytest.raises(ConfigError, match=match):
        delta_for([1.0, 0.5, 0.4], mode, value)


def test_estimator_feeds_the_general_form():
    cov = covariance_from(S2, RHO)
    x = _sample(cov, 200_000, 1)
    sigma2, rho, corr = estimate_sigma_rho(x)
    acc = gram_of(x)
    est = covariance_from(acc.variances(), corr)
    np.testing.assert_allclose(general_variance_curve(est, [0, 1, 2, 3, 4]), general_variance_curve(cov, [0, 1, 2, 3, 4]),
                               rtol=0.02)


# ----------------------------------------------------------------------------- online rule
def _peaked(peak: int, n: int = 12, seeds: int = 3, noise: float = 0.002, seed: int = 0):
    """Loss curve (lower is better) that falls like a power law to ``peak`` and then rises."""
    rng = np.random.default_rng(seed)
    k = np.repeat(np.arange(1, n + 1), seeds).astype(float)
    base = 0.2 + 0.4 / k**1.2
    rise = 0.01 * np.clip(k - peak, 0, None)
    fall_stop = np.where(k > peak, 0.2 + 0.4 / peak**1.2, base)
    return k, fall_stop + rise + rng.normal(0, noise, k.size)


@pytest.mark.parametrize("peak", [3, 4, 6, 8])
def test_online_rule_fires_near_a_known_peak(peak):
    k, loss = _peaked(peak)
    first_gain = 0.4 * (1 - 2**-1.2)
    fire = online_stop(k, loss, tol=0.05 * first_gain, window=2)
    assert fire.fired
    assert peak - 1 <= fire.fired_k <= peak + 2
    assert fire.best_k == min(peak, fire.fired_k)  # the best k measured up to the stop


def test_online_rule_does_not_fire_on_a_curve_that_keeps_rising():
    k = np.repeat(np.arange(1, 13), 3).astype(float)
    loss = 1.0 - 0.03 * k + np.random.default_rng(1).normal(0, 0.002, k.size)  # a steady gain of 0.03 per expert
    fire = online_stop(k, loss, tol=0.005, window=2)
    assert not fire.fired and fire.fired_k == 12


@pytest.mark.parametrize("seed", range(5))
def test_online_rule_invents_no_peak_on_a_flat_curve(seed):
    k = np.repeat(np.arange(1, 13), 3).astype(float)
    loss = 0.5 + np.random.default_rng(seed).normal(0, 0.0005, k.size)
    fire = online_stop(k, loss, tol=0.005, window=2)
    # the first k it may look at; it keeps the first k (nothing gained), whatever the noise's argmin
    assert fire.fired and fire.fired_k == 2 and fire.best_k in (1, 2)
    assert fire.steps[0]["k"] == 2 and abs(fire.steps[0]["measured_gain"]) < 0.005


@pytest.mark.parametrize("cost", [0.005, 0.01, 0.1, 0.2])
def test_online_rule_stops_at_the_second_point_when_the_curve_peaks_at_one(cost):
    """A curve whose loss rises from the first expert on (a sum of interfering experts):
    the rule must stop at k = 2 (one past the peak), keeping k = 1."""
    k = np.repeat(np.arange(1, 11), 3).astype(float)
    loss = 0.3 + 0.1 / k + cost * (k - 1) + np.random.default_rng(4).normal(0, 0.001, k.size)
    # k=1 -> 0.4; k=2 -> 0.35 + cost: the second expert loses when cost > 0.05
    fire = online_stop(k, loss, tol=0.002)
    if cost > 0.05:
        assert fire.fired and fire.fired_k == 2 and fire.best_k == 1
    else:  # the second expert gains, the peak is later (k = 4 and 3): no stop at 2
        true_peak = int(np.argmin(0.1 / np.arange(1, 11) + cost * np.arange(10))) + 1
        assert fire.fired_k > 2 and abs(fire.fired_k - true_peak) <= 2


def test_two_point_prediction_is_the_law_with_b_1_through_the_points():
    # L = 0.2 + 0.6 / k exactly: the law with b = 1 through (1, 0.8), (2, 0.5) is the curve itself
    from evomerge.theory.online_rule import two_point_gain

    assert two_point_gain(1, 0.8, 2, 0.5, 3) == pytest.approx(0.6 / 2 - 0.6 / 3)
    assert two_point_gain(2, 0.5, 4, 0.35, 6) == pytest.approx((0.6 / 4 - 0.6 / 6) / 2)
    assert two_point_gain(1, 0.5, 2, 0.6, 3) < 0  # a loss that rose predicts a loss


def test_online_rule_refuses_too_few_points():
    with pytest.raises(ConfigError, match="at least 2 distinct k"):
        online_stop([1, 1, 1], [0.5, 0.4, 0.4], tol=0.01)
    with pytest.raises(ConfigError, match="at least 3 distinct k"):
        online_stop([1, 2, 2], [0.5, 0.4, 0.4], tol=0.01, min_points=3)
    with pytest.raises(ConfigError, match="online_window"):
        online_stop([1, 2, 3], [0.5, 0.4, 0.3], tol=0.01, window=0)


def test_law_on_the_first_k_predicts_the_saturation_of_a_power_law():
    k = np.repeat(np.arange(1, 13), 2).astype(float)
    loss = 0.2 + 0.5 / k**1.0 + np.random.default_rng(3).normal(0, 0.0005, k.size)
    tol = 0.01
    pred = law_peak(k, loss, m=4, tol=tol, k_cap=12)
    # exact gain 0.5 (1/k - 1/(k+1)) = 0.5 / (k (k+1)) < 0.01  <=>  k (k+1) > 50  ->  k = 7
    assert abs(pred.predicted_k - 7) <= 1 and not pred.beyond
    assert pred.fit.n_points == 8
    # a loss that keeps falling by 0.05 per expert: the law fitted on k <= 4 holds b at its lower
    # bound (0.05), and its gain falls below tol only late: at the k a plain scan of the fit
    # gives (10), inside the cap; with the cap below it the law is still gaining there (beyond)
    rising = law_peak(k, 1.0 - 0.05 * k, m=4, tol=tol, k_cap=12)
    scan = next(j for j in range(1, 13) if rising.fit.predict(j) - rising.fit.predict(j + 1) < tol)
    assert rising.predicted_k == scan >= 10 and not rising.beyond
    capped = law_peak(k, 1.0 - 0.05 * k, m=4, tol=tol, k_cap=scan - 1)
    assert capped.beyond and capped.predicted_k == scan - 1
    with pytest.raises(ConfigError, match="law_first_k"):
        law_peak(k, loss, m=2, tol=tol, k_cap=12)


def _turning(peak: int, slope: float, n: int = 10, seeds: int = 3, seed: int = 0):
    """A power-law fall to ``peak``, then a loss that rises by ``slope`` per extra expert."""
    k = np.repeat(np.arange(1, n + 1), seeds).astype(float)
    clean = 0.2 + 0.4 / k**0.5 + slope * np.clip(k - peak, 0, None)
    return k, clean + np.random.default_rng(seed).normal(0, 0.001, k.size)


@pytest.mark.parametrize("peak", [5, 7])
def test_online_rule_stops_within_two_past_a_sharp_turn(peak):
    """The law is monotone: fitted to a curve that has turned it still predicts a gain, so without
    the turn condition the rule runs on (more than 2 past these peaks); ``turn`` rises beyond the
    tolerance in a row stop it ``turn`` past the peak."""
    k, loss = _turning(peak, slope=0.03)
    grid = np.arange(1, 11)
    assert int(np.argmin(0.4 / grid**0.5 + 0.03 * np.clip(grid - peak, 0, None))) + 1 == peak  # the clean curve's peak
    tol = 0.02 * 0.4 * (1 - 2**-0.5)  # 2% of the first gain, as in the scale run
    plain = online_stop(k, loss, tol=tol, turn=0)
    assert plain.fired_k > peak + 2
    for turn in (1, 2):  # 1: the default (TURN_STEPS)
        fire = online_stop(k, loss, tol=tol, turn=turn)
        assert fire.fired and fire.fired_k == peak + turn and fire.best_k == peak
        assert fire.steps[-1]["turned"] and fire.steps[-1]["predicted_gain"] > tol  # the law alone would go on
    assert online_stop(k, loss, tol=tol).fired_k == peak + 1


def test_turn_needs_rises_beyond_the_tolerance():
    """Noise below the tolerance on a flat tail never counts as a turn."""
    k = np.repeat(np.arange(1, 11), 3).astype(float)
    loss = 0.2 + 0.4 / k**2 + np.random.default_rng(2).normal(0, 1e-4, k.size)
    fire = online_stop(k, loss, tol=0.005, turn=2)
    assert not any(s["turned"] for s in fire.steps)
    assert fire.fired_k == online_stop(k, loss, tol=0.005, turn=0).fired_k
    with pytest.raises(ConfigError, match="turn"):
        online_stop(k, loss, tol=0.005, turn=-1)


def test_law_with_a_fixed_exponent_fits_two_parameters():
    from evomerge.theory.scaling_law import fit_scaling_law

    k = np.array([1.0, 2.0, 1.0, 2.0])
    fit = fit_scaling_law(k, 0.3 + 0.5 / k, b_fixed=1.0)  # two distinct k fix L_inf and A exactly
    assert fit.L_inf == pytest.approx(0.3) and fit.A == pytest.approx(0.5) and fit.b == 1.0
    assert (fit.n_points, fit.n_k, fit.n_params) == (4, 2, 2)
    free = fit_scaling_law(np.arange(1.0, 5.0), 0.3 + 0.5 / np.arange(1.0, 5.0))
    assert (free.n_k, free.n_params) == (4, 3)
    with pytest.raises(ConfigError, match="b_fixed"):
        fit_scaling_law(k, 0.3 + 0.5 / k, b_fixed=0.0)


def test_theorem1_rule_without_a_positive_drop_keeps_experts_while_the_variance_falls():
    """theorem1_rule: with a positive relative / adaptive Delta it is delta_for + theorem1_stop; when
    the drop it would scale is not positive, Delta is None and the rule fires before the first
    drop that is not positive (by hand below); the other refusals stand."""
    from evomerge.theory import delta_for, theorem1_rule, theorem1_stop

    falling = [1.0, 0.6, 0.45, 0.4, 0.38]
    for mode, value in (("relative", 0.1), ("adaptive", None), ("fixed", 0.02)):
        delta, fire = theorem1_rule(falling, mode, value)
        assert delta == delta_for(falling, mode, value) and fire == theorem1_stop(falling, delta)
    rises_first = [1.0, 2.5, 1.2, 0.8]  # relative: first drop -1.5
    delta, fire = theorem1_rule(rises_first, "relative", 0.1)
    assert (delta, fire.fired_k, fire.fired) == (None, 1, True)
    late_rise = [1.0, 0.3, 0.25, 0.9, 1.4]  # adaptive: mean drop (1 - 1.4) / 4 < 0; drops .7, .05, -.65
    delta, fire = theorem1_rule(late_rise, "adaptive")
    assert (delta, fire.fired_k, fire.fired) == (None, 3, True)
    assert theorem1_rule(late_rise, "relative", 0.1)[0] == pytest.approx(0.07)  # its first drop is positive
    with pytest.raises(ConfigError, match="delta_fraction"):
        theorem1_rule(rises_first, "relative", 1.5)
    with pytest.raises(ConfigError, match="fixed Delta"):
        theorem1_rule(rises_first, "fixed", -1.0)
    with pytest.raises(ConfigError, match="at least 2 experts"):
        theorem1_rule([1.0], "relative", 0.1)
