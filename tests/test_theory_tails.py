"""Kurtosis, Hill tail index and the singular-value spectrum summary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evomerge.theory import excess_kurtosis, hill_tail_index, singular_value_tail
from evomerge.theory.tails import kurtosis_from_moments


def test_kurtosis_gaussian_laplace_uniform():
    rng = np.random.default_rng(0)
    assert excess_kurtosis(rng.standard_normal(400_000)) == pytest.approx(0.0, abs=0.05)
    assert excess_kurtosis(rng.laplace(size=400_000)) == pytest.approx(3.0, abs=0.15)
    assert excess_kurtosis(rng.uniform(size=400_000)) == pytest.approx(-1.2, abs=0.02)
    assert np.isnan(excess_kurtosis(torch.ones(10)))


def test_kurtosis_from_moments_matches_direct():
    rng = np.random.default_rng(1)
    x = rng.laplace(loc=0.3, size=10_000)
    s = [float(np.sum(x**p)) for p in range(1, 5)]
    assert kurtosis_from_moments(x.size, *s) == pytest.approx(excess_kurtosis(x), rel=1e-8)


@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.0])
def test_hill_recovers_pareto_index(alpha):
    rng = np.random.default_rng(2)
    x = (rng.pareto(alpha, size=200_000) + 1.0) * rng.choice([-1.0, 1.0], size=200_000)
    assert hill_tail_index(x, k_frac=0.01) == pytest.approx(alpha, rel=0.08)


def test_hill_gaussian_is_light_tailed_and_edge_cases():
    rng = np.random.default_rng(3)
    assert hill_tail_index(rng.standard_normal(100_000), 0.01) > 5.0
    assert np.isnan(hill_tail_index(np.zeros(50), 0.01))


def test_singular_value_tail_of_low_rank_delta():
    g = torch.Generator().manual_seed(0)
    b, a = torch.randn(64, 4, generator=g), torch.randn(4, 32, generator=g)
    s = singular_value_tail(b @ a)
    assert 1.0 <= s["stable_rank"] <= 4.0 + 1e-6
    assert s["effective_rank"] <= 4.0 + 1e-6
    diag = torch.diag(torch.tensor([4.0, 2.0, 1.0]))
    s = singular_value_tail(diag)
    assert s["stable_rank"] == pytest.approx(21 / 16)
    assert s["top1_energy"] == pytest.approx(16 / 21)


def test_lora_singular_values_match_full_svd():
    from evomerge.theory.tails import lora_singular_values

    g = torch.Generator().manual_seed(1)
    b, a = torch.randn(50, 6, generator=g), torch.randn(6, 30, generator=g)
    ref = np.linalg.svd((0.25 * b @ a).double().numpy(), compute_uv=False)[:6]
    np.testing.assert_allclose(np.sort(lora_singular_values(b, a, 0.25))[::-1], ref, rtol=1e-5)


def test_partial_spectrum_from_randomized_svd_matches_exact():
    from evomerge.theory.geometry import left_subspace_and_spectrum
    from evomerge.theory.tails import partial_spectrum_summary

    g = torch.Generator().manual_seed(2)
    d = torch.randn(120, 4, generator=g, dtype=torch.float64) @ torch.randn(4, 90, generator=g, dtype=torch.float64)
    d = d + 0.01 * torch.randn(120, 90, generator=g, dtype=torch.float64)
    _, s, complete = left_subspace_and_spectrum(d, 8, torch.Generator().manual_seed(0), oversample=4)
    assert not complete
    exact = singular_value_tail(d)
    part = partial_spectrum_summary(s, float((d * d).sum()))
    assert part["stable_rank"] == pytest.approx(exact["stable_rank"], rel=1e-6)
    assert part["top1_energy"] == pytest.approx(exact["top1_energy"], rel=1e-6)
    assert np.isnan(part["effective_rank"])
