"""Theorem 1's stop rule at its built-in ties: a drop equal to Delta (up to float rounding) is
worth the expert, whatever the pool's sigma^2 and rho.

The expected n comes from integer maths, not from the code: in the equicorrelated form the drop
at n is ``sigma^2 (1 - rho) / (n (n - 1))``, so a relative Delta ``f sigma^2 (1 - rho) / 2`` is
reached while ``n (n - 1) <= 2 / f`` and the adaptive one ``sigma^2 (1 - rho) / N`` while
``n (n - 1) <= N``.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from evomerge.analysis import analyze_pool
from evomerge.theory import (
    adaptive_delta,
    covariance_from,
    general_variance_curve,
    n_max,
    theorem1_rule,
    variance_curve,
)


def largest_n(bound: Fraction) -> int:
    """Largest integer n >= 1 with n (n - 1) <= bound (exact)."""
    n = 1
    while (n + 1) * n <= bound:
        n += 1
    return n


def random_pools(count: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield float(10 ** rng.uniform(-9, 3)), float(rng.uniform(-0.2, 0.99))


def test_integer_reference():
    assert largest_n(Fraction(20)) == 5 and largest_n(Fraction(6)) == 3 and largest_n(Fraction(12)) == 4
    assert largest_n(Fraction(19)) == 4 and largest_n(Fraction(2)) == 2


@pytest.mark.parametrize("f", [0.1, 0.2, 1 / 3, 0.05, 0.3])
def test_relative_delta_gives_the_same_n_for_every_pool(f):
    """f = 0.1: n (n - 1) <= 20 -> 5 for 2000 random (sigma^2, rho); before the tolerance, about 4 in 10
    pools got 4 (the drop at 5 and Delta differ in the last bit)."""
    want = largest_n(2 / Fraction(f).limit_denominator(1000))
    got = {n_max(s2, rho, f * s2 * (1 - rho) / 2) for s2, rho in random_pools(2000, 1)}
    assert got == {want}
    if f == 0.1:
        assert want == 5


@pytest.mark.parametrize("big_n", [6, 12, 20, 30, 7, 13])
def test_adaptive_delta_at_n_times_n_minus_1(big_n):
    want = largest_n(Fraction(big_n))
    assert {n_max(s2, rho, adaptive_delta(s2, rho, big_n)) for s2, rho in random_pools(500, 2)} == {want}
    assert {6: 3, 12: 4, 20: 5}.get(big_n, want) == want


def test_closed_form_of_the_docs():
    """n_max = floor(sqrt(2/f + 1/4) + 1/2) for a relative Delta, whatever the pool."""
    for f in (0.1, 0.05, 0.25, 0.5, 0.01):
        closed = int(np.floor(np.sqrt(2 / f + 0.25) + 0.5))
        assert closed == largest_n(2 / Fraction(f).limit_denominator(1000))
        assert {n_max(s2, rho, f * s2 * (1 - rho) / 2) for s2, rho in random_pools(200, 3)} == {closed}


def test_table_worth_adding_agrees_with_n_max():
    for s2, rho in random_pools(500, 4):
        delta = 0.1 * s2 * (1 - rho) / 2
        rows = variance_curve(s2, rho, 10, delta)
        assert [r["k"] for r in rows if r["worth_adding"]] == [1, 2, 3, 4, 5]
        for big_n in (6, 12, 20):
            rows = variance_curve(s2, rho, 10, adaptive_delta(s2, rho, big_n))
            assert max(r["k"] for r in rows if r["worth_adding"]) == largest_n(Fraction(big_n))


def test_general_form_fires_at_the_same_k():
    """Eq. 18 with equal variances and correlations, uniform weights: the same tie, the same k."""
    for s2, rho in random_pools(300, 5):
        n = 10
        corr = np.full((n, n), rho)
        np.fill_diagonal(corr, 1.0)
        v = general_variance_curve(covariance_from(np.full(n, s2), corr), list(range(n)))
        assert theorem1_rule(v, "relative", 0.1)[1].fired_k == 5
        v20 = general_variance_curve(covariance_from(np.full(20, s2), np.where(np.eye(20) > 0, 1.0, rho)), list(range(20)))
        assert theorem1_rule(v20, "adaptive")[1].fired_k == 5


def test_analysis_table_and_summary_agree(tmp_path):
    """analyze_pool with the relative Delta: n_max 5 in the summary and worth_adding exactly k <= 5 in
    variance_floor.parquet, for several pools (the sample's sigma^2 and rho vary)."""
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(1, 400, generator=g) * 0.3 + torch.randn(8, 400, generator=g) * (1 + seed)
        res = analyze_pool(x, tmp_path / f"a{seed}", delta="relative", delta_fraction=0.1, progress=False)
        assert res.summary["n_max"] == 5 and res.summary["stop_k"] == 5
        table = pq.read_table(tmp_path / f"a{seed}" / "variance_floor.parquet").to_pylist()
        assert [r["k"] for r in table if r["worth_adding"]] == [1, 2, 3, 4, 5]
