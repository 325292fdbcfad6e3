"""The random-subspace level of principal angles, against exact values and an independent
Monte-Carlo (both subspaces drawn, another seed, angles by scipy for the small shapes)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg

from evomerge.errors import ConfigError
from evomerge.theory.geometry import random_subspace_mean_angle


def independent_mc(dim: int, p: int, q: int, trials: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    small = dim * max(p, q) <= 2000  # scipy's angles where it is quick, else cosines from Q_a^T Q_b
    m = []
    for _ in range(trials):
        a, b = rng.standard_normal((dim, p)), rng.standard_normal((dim, q))
        if small:
            m.append(np.degrees(scipy.linalg.subspace_angles(a, b)).mean())
        else:
            s = np.linalg.svd(np.linalg.qr(a)[0].T @ np.linalg.qr(b)[0], compute_uv=False)
            m.append(np.degrees(np.arccos(np.clip(s, 0, 1))).mean())
    return float(np.mean(m)), float(np.std(m, ddof=1) / math.sqrt(trials))


@pytest.mark.parametrize("shape", [(256, 32, 32), (512, 32, 32), (40, 8, 3), (12, 5, 9), (6, 4, 4)])
def test_matches_an_independent_monte_carlo(shape):
    mean, se = random_subspace_mean_angle(*shape, seed=0, trials=512)
    ref, ref_se = independent_mc(*shape, trials=200, seed=123)
    assert abs(mean - ref) < 5 * math.hypot(se, ref_se)
    assert se < 0.5


def test_the_default_zoo_shapes_sit_well_below_90():
    """Rank-32 B in 256 and 512 output dimensions: about 72 and 78 degrees (audit: ~73.5 averaged)."""
    a256, _ = random_subspace_mean_angle(256, 32, 32, seed=0)
    a512, _ = random_subspace_mean_angle(512, 32, 32, seed=0)
    assert 70 < a256 < 74 and 76 < a512 < 80


def test_exact_cases():
    # two lines in the plane: the angle is uniform on [0, 90] -> 45
    m, se = random_subspace_mean_angle(2, 1, 1, seed=1, trials=20000)
    assert abs(m - 45.0) < 4 * se
    # two lines in R^3: |cos| is uniform on [0, 1] (Archimedes) -> E arccos U = 1 rad
    m, se = random_subspace_mean_angle(3, 1, 1, seed=1, trials=20000)
    assert abs(m - math.degrees(1.0)) < 4 * se
    # a subspace that fills the space contains the other: every angle 0
    m, _ = random_subspace_mean_angle(7, 7, 3, seed=1)
    assert m == pytest.approx(0.0, abs=1e-5)
    # p + q > dim forces p + q - dim zero angles: 3 and 3 in R^4 share at least 2 directions
    ref, ref_se = independent_mc(4, 3, 3, trials=2000, seed=5)
    m, se = random_subspace_mean_angle(4, 3, 3, seed=1, trials=2000)
    assert abs(m - ref) < 5 * math.hypot(se, ref_se) and m < 30
    # lines in high dimension are nearly orthogonal: E|cos| = sqrt(2 / (pi d)) to first order
    d = 20000
    m, se = random_subspace_mean_angle(d, 1, 1, seed=1, trials=2000)
    assert abs(m - (90 - math.degrees(math.sqrt(2 / (math.pi * d))))) < 4 * se + 0.01


def test_reproducible_and_refusals():
    assert random_subspace_mean_angle(30, 4, 4, seed=3) == random_subspace_mean_angle(30, 4, 4, seed=3)
    assert random_subspace_mean_angle(30, 4, 4, seed=3) != random_subspace_mean_angle(30, 4, 4, seed=4)
    with pytest.raises(ConfigError, match="do not fit"):
        random_subspace_mean_angle(3, 4, 1, seed=0)
    with pytest.raises(ConfigError, match="p must be"):
        random_subspace_mean_angle(3, 0, 1, seed=0)


def test_large_shapes_are_drawn_in_small_batches_with_the_same_result():
    """A shape whose 128 draws would not fit in 32 MB is drawn one at a time; the draws, and so
    the level, are those of drawing every trial at once (computed here in one batch)."""
    import numpy as np

    from evomerge.seeding import derive_rng
    from evomerge.theory.geometry import random_subspace_mean_angle

    dim, p, q, trials = 32768, 129, 3, 3  # dim * p > 2**22: one draw per batch
    g = derive_rng("random-subspace-angles", 5, dim, p, q).standard_normal((trials, dim, p))
    cos = np.clip(np.linalg.svd(np.linalg.qr(g)[0][:, :q, :], compute_uv=False), 0.0, 1.0)
    m = np.degrees(np.arccos(cos)).mean(axis=1)
    mean, se = random_subspace_mean_angle(dim, p, q, seed=5, trials=trials)
    assert mean == float(m.mean()) and se == float(m.std(ddof=1) / np.sqrt(trials))
