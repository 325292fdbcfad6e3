"""The pool analysis's random-subspace level of the mean principal angle: recorded in
summary.json, averaged like the measured angle, printed, and marked on principal_angles.png."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from evomerge.analysis import analyze_pool
from evomerge.analysis import figures as afig
from evomerge.experts.types import LoraModule

SHAPES = {"model.layers.0.q_proj.weight": (48, 20), "model.layers.0.v_proj.weight": (24, 20),
          "model.layers.1.q_proj.weight": (48, 20)}  # (out, in): two keys in R^48, one in R^24
RANK = 4


class LoraPool:
    kind = "lora"

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.names = [f"e{i}" for i in range(n)]
        self.mods = [{k: LoraModule(A=torch.randn(RANK, i_, generator=g), B=torch.randn(o, RANK, generator=g), scale=1.0)
                      for k, (o, i_) in SHAPES.items()} for _ in range(n)]

    def keys(self):
        return list(SHAPES)

    def stacked(self, key):
        return torch.stack([m[key].delta() for m in self.mods])

    def lora(self, i):
        return self.mods[i]


def my_mc(dim: int, rank: int, trials: int, seed: int) -> tuple[float, float]:
    """Both subspaces Gaussian, angles from the SVD of Q_a^T Q_b (float64)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(trials):
        qa = np.linalg.qr(rng.standard_normal((dim, rank)))[0]
        qb = np.linalg.qr(rng.standard_normal((dim, rank)))[0]
        s = np.clip(np.linalg.svd(qa.T @ qb, compute_uv=False), 0, 1)
        out.append(np.degrees(np.arccos(s)).mean())
    return float(np.mean(out)), float(np.std(out, ddof=1) / math.sqrt(trials))


def test_random_level_averaged_like_the_measured_angle(tmp_path, monkeypatch):
    titles = []
    real = afig._save
    monkeypatch.setattr(afig, "_save", lambda fig, path: (titles.append(fig.axes[0].get_title()), real(fig, path))[1])
    n = 6
    res = analyze_pool(LoraPool(n, seed=2), tmp_path / "a", seed=0, progress=False)
    got = json.loads((tmp_path / "a" / "summary.json").read_text())["principal_angle_random_deg"]
    assert got == res.summary["principal_angle_random_deg"]
    # every pair compares all three keys: per pair (2 x E[R^48] + E[R^24]) / 3, the same for each pair
    (m48, se48), (m24, se24) = my_mc(48, RANK, 3000, 11), my_mc(24, RANK, 3000, 12)
    want = (2 * m48 + m24) / 3
    se = math.hypot(2 * se48, se24) / 3
    assert abs(got - want) < 5 * se + 5 * 0.6 / 3  # (+ the analysis's own MC error, about 0.6 deg per shape at most)
    # the experts' B are independent Gaussian matrices: the measured mean sits at the random level
    assert res.summary["mean_principal_angle"] == pytest.approx(got, abs=3.0)
    assert not any("90" in t for t in titles)
    assert any(t.startswith("mean principal angle") and f"random subspaces of these shapes: {got:.1f}" in t for t in titles)


def test_no_angles_no_level(tmp_path):
    res = analyze_pool(torch.randn(3, 50), tmp_path / "m", progress=False)
    assert res.summary["mean_principal_angle"] is None and res.summary["principal_angle_random_deg"] is None
