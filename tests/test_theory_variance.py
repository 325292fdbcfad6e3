"""Theorem 1 (variance floor) checked against Monte-Carlo and brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evomerge.errors import ConfigError, ExpertLoadError
from evomerge.theory import (
    adaptive_delta,
    estimate_sigma_rho,
    merged_variance,
    n_max,
    stop_index,
    uniform_merged_variance,
    variance_curve,
    variance_drop,
)


def correlated_experts(n: int, d: int, sigma2: float, rho: float, seed: int) -> torch.Tensor:
    """n experts, each coordinate N(0, sigma2), pairwise correlation rho (shared factor)."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(1, d, generator=g, dtype=torch.float64)
    own = torch.randn(n, d, generator=g, dtype=torch.float64)
    return math.sqrt(sigma2) * (math.sqrt(rho) * shared + math.sqrt(1 - rho) * own)


@pytest.mark.parametrize("rho", [0.0, 0.3, 0.8])
@pytest.mark.parametrize("alphas", [[0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1], [0.5, 0.5, 0.0, 0.0]])
def test_merged_variance_matches_monte_carlo(rho, alphas):
    sigma2 = 2.5
    x = correlated_experts(4, 400_000, sigma2, rho, seed=1)
    merged = (torch.tensor(alphas, dtype=torch.float64)[:, None] * x).sum(0)
    empirical = float(merged.var())
    theory = merged_variance(sigma2, rho, alphas)
    assert empirical == pytest.approx(theory, rel=0.015)


def test_merged_variance_hand_values():
    # sigma2 (rho + (1-rho) sum a^2): 2 * (0.5 + 0.5 * (0.36 + 0.16)) = 1.52
    assert merged_variance(2.0, 0.5, [0.6, 0.4]) == pytest.approx(1.52)
    assert uniform_merged_variance(2.0, 0.5, 4) == pytest.approx(2.0 * (0.5 + 0.5 / 4))
    assert merged_variance(1.0, 0.2, torch.full((5,), 0.2)) == pytest.approx(uniform_merged_variance(1.0, 0.2, 5))
    # drop is the difference of consecutive uniform variances
    for n in range(2, 12):
        diff = uniform_merged_variance(3.0, 0.1, n - 1) - uniform_merged_variance(3.0, 0.1, n)
        assert variance_drop(3.0, 0.1, n) == pytest.approx(diff)


def test_merged_variance_rejects_bad_weights():
    with pytest.raises(ConfigError, match="sum to 1"):
        merged_variance(1.0, 0.2, [0.5, 0.6])
    with pytest.raises(ConfigError, match="rho"):
        merged_variance(1.0, 1.5, [1.0])
    with pytest.raises(ConfigError, match="n must be"):
        variance_drop(1.0, 0.2, 1)


def brute_force_n_max(sigma2, rho, delta, n_limit=100_000):
    best = 1
    for n in range(2, n_limit):
        if sigma2 * (1 - rho) / (n * (n - 1)) >= delta:
            best = n
        else:
            break
    return best


@pytest.mark.parametrize("sigma2", [1e-6, 0.01, 1.0, 7.3])
@pytest.mark.parametrize("rho", [-0.1, 0.0, 0.25, 0.6, 0.95])
@pytest.mark.parametrize("rel_delta", [1e-4, 3e-3, 0.02, 0.1, 0.4, 0.6, 2.0])
def test_n_max_equals_brute_force(sigma2, rho, rel_delta):
    delta = rel_delta * sigma2
    assert n_max(sigma2, rho, delta) == brute_force_n_max(sigma2, rho, delta)


def test_n_max_exact_boundaries_and_edges():
    # drop(n) = 1/(n(n-1)); delta exactly drop(5) = 1/20 -> 5 is still worth adding
    assert n_max(1.0, 0.0, 1 / 20) == 5
    assert n_max(1.0, 0.0, 1 / 20 + 1e-12) == 5  # equal up to rounding (2e-11 relative): a tie
    assert n_max(1.0, 0.0, 1 / 20 * (1 + 1e-7)) == 4  # above the 1e-9 relative tolerance
    assert n_max(1.0, 1.0, 0.01) == 1  # fully correlated: nothing to gain
    assert n_max(0.0, 0.3, 0.01) == 1
    with pytest.raises(ConfigError, match="delta"):
        n_max(1.0, 0.2, 0.0)
    with pytest.raises(ConfigError, match="delta"):
        n_max(1.0, 0.2, -1.0)
    assert stop_index(1.0, 0.0, 1e-6, n_available=7) == 7
    assert stop_index(1.0, 0.0, 1 / 20, n_available=7) == 5


def test_adaptive_delta_is_mean_drop():
    sigma2, rho, n = 2.0, 0.3, 10
    drops = [variance_drop(sigma2, rho, k) for k in range(2, n + 1)]
    assert adaptive_delta(sigma2, rho, n) == pytest.approx(np.mean(drops))
    # scale-free: n_max ~ sqrt(N)
    for n_pool, expect in [(10, 3), (16, 4), (36, 6)]:
        assert n_max(5.0, 0.4, adaptive_delta(5.0, 0.4, n_pool)) == expect
    assert n_max(sigma2, rho, adaptive_delta(sigma2, rho, n, mode="at_pool")) == n


def test_variance_curve_rows():
    rows = variance_curve(1.0, 0.2, 6, delta=0.05)
    assert [r["k"] for r in rows] == list(range(1, 7))
    worth = [r["k"] for r in rows if r["worth_adding"]]
    assert max(worth) == n_max(1.0, 0.2, 0.05)


@pytest.mark.parametrize("rho", [0.0, 0.4, 0.9])
def test_estimate_sigma_rho_recovers_known_values(rho):
    x = correlated_experts(6, 200_000, 0.04, rho, seed=3)
    sigma2, rho_hat, corr = estimate_sigma_rho(x)
    assert sigma2 == pytest.approx(0.04, rel=0.02)
    assert rho_hat == pytest.approx(rho, abs=0.01)
    assert corr.shape == (6, 6)
    np.testing.assert_allclose(corr, np.corrcoef(x.numpy()), atol=1e-10)


def test_estimate_sigma_rho_streaming_equals_one_shot():
    x = correlated_experts(5, 30_000, 1.0, 0.3, seed=4).to(torch.float32)
    one_shot = estimate_sigma_rho(x)
    # the same vectors as uneven per-key stacked tensors of different shapes
    cuts = [0, 7, 1007, 13_007, 30_000]
    shapes = [(7,), (10, 100), (40, 300), (16_993,)]
    blocks = (x[:, a:b].reshape(5, *s) for (a, b), s in zip(zip(cuts, cuts[1:]), shapes))
    streamed = estimate_sigma_rho(blocks)
    listed = estimate_sigma_rho([x[i] for i in range(5)])
    for other in (streamed, listed):
        assert other[0] == pytest.approx(one_shot[0], rel=1e-12)
        assert other[1] == pytest.approx(one_shot[1], rel=1e-12)
        np.testing.assert_allclose(other[2], one_shot[2], atol=1e-12)


def test_estimate_sigma_rho_zero_variance_expert_is_named():
    x = torch.randn(3, 100, generator=torch.Generator().manual_seed(0))
    x[1] = 0.0
    with pytest.raises(ExpertLoadError, match=r"\[1\]"):
        estimate_sigma_rho(x)
