"""Gaussian width (Theorem 2) and the redundancy threshold (Theorem 3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evomerge.errors import ConfigError
from evomerge.theory import ellipsoid_width, ellipsoid_width_mc, gaussian_width_mc, redundancy_rhs, redundancy_threshold, width_curve


def test_width_of_simplex_vertices_and_ball_points():
    g = torch.Generator().manual_seed(0)
    # the set {+e_i, -e_i}: sup <g,x> = max |g_i| ; for d=1 that is E|g| = sqrt(2/pi)
    pts = torch.tensor([[1.0], [-1.0]])
    assert gaussian_width_mc(pts, 200_000, g) == pytest.approx(math.sqrt(2 / math.pi), rel=0.01)


def test_ellipsoid_width_mc_close_to_closed_form_in_high_dim():
    g = torch.Generator().manual_seed(1)
    lam = np.linspace(0.5, 4.0, 400)
    mc = ellipsoid_width_mc(lam, 0.1, 4000, g)
    closed = ellipsoid_width(lam, 0.1)
    assert mc <= closed * 1.001  # Jensen: E sqrt <= sqrt E
    assert mc == pytest.approx(closed, rel=0.01)


def test_width_curve_concave_increasing():
    lam = np.array([3.0, 0.5, 1.0, 8.0, 2.0])
    w = width_curve(lam, 0.2)
    assert w[-1] == pytest.approx(ellipsoid_width(lam, 0.2))
    assert w[0] == pytest.approx(math.sqrt(2 * 0.2 / 0.5))
    inc = np.diff(w)
    assert np.all(inc > 0) and np.all(np.diff(inc) < 0)


def test_redundancy_threshold_hand_computed():
    lam = np.array([1.0, 2.0, 4.0])
    eps, dist2 = 0.5, 1.0  # r_i^2 = 1, 0.5, 0.25
    # k=1: 3 - (1/2 + 0.5/1.5) = 2.1667 ; k=2: 3 - 1/2 = 2.5 ; k=3: 3
    assert redundancy_rhs(lam, eps, dist2, 1) == pytest.approx(3 - 0.5 - 1 / 3)
    assert redundancy_rhs(lam, eps, dist2, 2) == pytest.approx(2.5)
    # k=0: 1/2 + 1/1.5 + 1/1.25 = 1.9667 effective directions
    assert redundancy_threshold(lam, eps, dist2) == pytest.approx(0.5 + 1 / 1.5 + 0.8)
    for k in range(4):  # the inequality itself always holds
        assert redundancy_rhs(lam, eps, dist2, k) >= k
    # far from the optimum every direction counts; at the optimum none does
    assert redundancy_threshold(lam, eps, 1e9) == pytest.approx(3.0, abs=1e-6)
    assert redundancy_threshold(lam, eps, 0.0) == 0.0
    with pytest.raises(ConfigError, match="eigenvalues"):
        ellipsoid_width([1.0, -1.0], 0.1)
