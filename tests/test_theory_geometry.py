"""PCA over experts, principal angles and cosine on constructed data with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evomerge.errors import ConfigError
from evomerge.experts.types import LoraModule
from evomerge.theory import (
    gram_of,
    lora_subspace_angles,
    n_components_for,
    pairwise_cosine,
    pca_cumulative_variance,
    principal_angles,
)
from evomerge.theory.geometry import layer_index, threshold_reached_at


def test_pca_known_rank():
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(4, 5000, generator=g, dtype=torch.float64)
    coef = torch.randn(10, 4, generator=g, dtype=torch.float64)
    x = coef @ dirs + 3.0 * torch.randn(1, 5000, generator=g, dtype=torch.float64)  # common offset
    cum = pca_cumulative_variance(x)
    assert cum.shape == (10,)
    assert cum[3] == pytest.approx(1.0, abs=1e-9)
    assert cum[2] < 0.999
    assert n_components_for(cum, 0.95) <= 4
    assert n_components_for(cum, 1.0) == 4


def test_pca_matches_numpy_svd_and_streaming():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 3000, generator=g, dtype=torch.float64) * torch.linspace(0.1, 2, 3000, dtype=torch.float64)
    xc = (x - x.mean(0)).numpy()
    s = np.linalg.svd(xc, compute_uv=False)
    ref = np.cumsum(s**2) / np.sum(s**2)
    cum = pca_cumulative_variance(x)
    np.testing.assert_allclose(cum[: ref.size], ref, atol=1e-10)
    streamed = pca_cumulative_variance(gram_of(iter([x[:, :1000], x[:, 1000:].reshape(7, 40, 50)])))
    np.testing.assert_allclose(streamed, cum, atol=1e-12)


def test_n_components_for_threshold():
    assert n_components_for(np.array([0.5, 0.9, 0.96, 1.0]), 0.95) == 3
    assert n_components_for(np.array([0.5, 0.9, 0.95, 1.0]), 0.95) == 3
    assert n_components_for(np.zeros(3), 0.95) == 0
    # where the threshold is first reached: None where it is not (the count is then all of them, or 0 flat)
    assert threshold_reached_at(np.array([0.5, 0.9, 0.95 - 1e-13, 1.0]), 0.95) == 3
    assert threshold_reached_at(np.array([0.5, 0.9]), 0.95) is None and n_components_for(np.array([0.5, 0.9]), 0.95) == 2
    assert threshold_reached_at(np.zeros(3), 0.95) is None and threshold_reached_at(np.array([]), 0.95) is None
    with pytest.raises(ConfigError, match="threshold"):
        threshold_reached_at(np.array([1.0]), 0.0)


def test_principal_angles_rotated_basis():
    g = torch.Generator().manual_seed(2)
    q, _ = torch.linalg.qr(torch.randn(50, 6, generator=g, dtype=torch.float64))
    e1, e2, e3, f1, f2, f3 = q.T
    th = [math.radians(30), math.radians(60), math.radians(90)]
    a = torch.stack([e1, e2, e3], 1)
    b = torch.stack([math.cos(t) * e + math.sin(t) * f for t, e, f in zip(th, (e1, e2, e3), (f1, f2, f3))], 1)
    # a non-orthonormal basis of the same space must give the same angles
    b = b @ torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0], [0.0, 0.0, 0.5]], dtype=torch.float64)
    np.testing.assert_allclose(principal_angles(a, b), [30.0, 60.0, 90.0], atol=1e-6)
    np.testing.assert_allclose(principal_angles(a, a @ torch.randn(3, 3, generator=g, dtype=torch.float64)), 0.0, atol=1e-5)


def test_principal_angles_rank_deficient_and_scipy():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(3)
    a = torch.randn(40, 5, generator=g, dtype=torch.float64)
    b = torch.randn(40, 3, generator=g, dtype=torch.float64)
    ref = np.sort(np.degrees(scipy_linalg.subspace_angles(a.numpy(), b.numpy())))
    np.testing.assert_allclose(principal_angles(a, b), ref, atol=1e-6)
    b_def = torch.cat([b, b[:, :1] + b[:, 1:2]], 1)  # rank 3 in 4 columns
    np.testing.assert_allclose(principal_angles(a, b_def), ref, atol=1e-6)


def test_lora_subspace_angles_per_layer():
    g = torch.Generator().manual_seed(4)
    q, _ = torch.linalg.qr(torch.randn(32, 4, generator=g))
    a_in = torch.randn(2, 16, generator=g)
    m_same = LoraModule(A=a_in, B=q[:, :2] * 3, scale=2.0)
    m_orth = LoraModule(A=a_in, B=q[:, 2:], scale=2.0)
    mi = {"model.layers.0.q.weight": m_same, "model.layers.1.q.weight": m_same}
    mj = {"model.layers.0.q.weight": m_same, "model.layers.1.q.weight": m_orth, "model.layers.2.q.weight": m_same}
    rows = lora_subspace_angles(mi, mj)
    assert [r["layer"] for r in rows] == [0, 1]
    assert rows[0]["mean_angle"] == pytest.approx(0.0, abs=1e-3)
    assert rows[1]["mean_angle"] == pytest.approx(90.0, abs=1e-4)
    assert rows[1]["n_angles"] == 2


def test_layer_index_and_cosine():
    assert layer_index("model.layers.12.mlp.up_proj.weight") == 12
    assert layer_index("transformer.h.3.attn.c_attn.weight") == 3
    assert layer_index("lm_head.weight") is None
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -2.0]])
    cos = pairwise_cosine(x)
    ref = (x @ x.T / (x.norm(dim=1)[:, None] * x.norm(dim=1)[None])).numpy()
    np.testing.assert_allclose(cos, ref, atol=1e-7)


def test_randomized_subspace_matches_exact():
    from evomerge.theory.geometry import randomized_left_subspace, top_left_subspace

    g = torch.Generator().manual_seed(5)
    u, _ = torch.linalg.qr(torch.randn(300, 6, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(200, 6, generator=g, dtype=torch.float64))
    d = u @ torch.diag(torch.tensor([9.0, 7, 5, 4, 3, 2], dtype=torch.float64)) @ v.T
    d = d + 1e-3 * torch.randn(300, 200, generator=g, dtype=torch.float64)
    approx = randomized_left_subspace(d, 6, torch.Generator().manual_seed(0))
    exact = top_left_subspace(d, 6)
    assert approx.shape == (300, 6)
    assert principal_angles(approx, exact).max() < 0.1
    assert principal_angles(approx, u).max() < 1.0  # the noise itself tilts the top subspace by ~0.5 deg
    # float32 rounding noise is not counted as rank
    low = (torch.randn(40, 3, generator=g) @ torch.randn(3, 30, generator=g)).float()
    assert top_left_subspace(low, 8).shape[1] == 3
