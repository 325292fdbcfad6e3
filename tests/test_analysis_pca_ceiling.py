"""The PCA count at its n - 1 ceiling is said so (summary, figure title, `evomerge analyze`), and
the summary's `rht` says what the analysis did with RHT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evomerge.analysis import analyze_pool
from evomerge.analysis import figures as afig
from evomerge.config import RHTConfig


def count_for_95(x: np.ndarray) -> int:
    """Components for 95% of the variance, experts as samples: SVD of the centred matrix."""
    s = np.linalg.svd(x - x.mean(0), compute_uv=False) ** 2
    return int(np.searchsorted(np.cumsum(s) / s.sum(), 0.95 - 1e-12) + 1)


@pytest.fixture
def titles(monkeypatch):
    got = []
    real = afig._save
    monkeypatch.setattr(afig, "_save", lambda fig, path: (got.append(fig.axes[0].get_title()), real(fig, path))[1])
    return got


def test_random_pool_sits_at_the_ceiling(tmp_path, titles):
    x = torch.randn(6, 3000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = analyze_pool(x, tmp_path / "a", progress=False)
    want = count_for_95(x.numpy())
    assert want == 5  # 6 independent experts: every centred direction carries about a fifth
    assert res.summary["pca_components"] == want and res.summary["pca_at_ceiling"] is True
    pca_title = next(t for t in titles if t.startswith("PCA of task vectors"))
    assert "95% needs 5, the ceiling: 6 centred experts span at most 5 directions" in pca_title


def test_low_rank_pool_is_not_at_the_ceiling(tmp_path, titles):
    g = torch.Generator().manual_seed(1)
    basis = torch.randn(2, 3000, generator=g, dtype=torch.float64)
    x = torch.randn(8, 2, generator=g, dtype=torch.float64) @ basis + 0.01 * torch.randn(8, 3000, generator=g, dtype=torch.float64)
    res = analyze_pool(x, tmp_path / "b", progress=False)
    assert res.summary["pca_components"] == count_for_95(x.numpy()) == 2
    assert res.summary["pca_at_ceiling"] is False
    assert next(t for t in titles if t.startswith("PCA of task vectors")) == "PCA of task vectors"


def test_rht_field_says_what_was_done(tmp_path):
    """enabled: false in the config, yet the analysis compares the merge with and without RHT:
    the summary says "compared", with the merged kurtosis after RHT beside it, not "applied"."""
    cfg = RHTConfig(enabled=False, seed=3)
    res = analyze_pool(torch.randn(4, 2000, generator=torch.Generator().manual_seed(2)), tmp_path / "c",
                       rht_cfg=cfg, progress=False)
    s = res.summary
    assert s["rht_config"]["enabled"] is False
    assert s["rht"].startswith("compared: the uniform merge's tails without and with RHT")
    assert "applied" not in s["rht"] and s["merged_kurtosis_rht"] is not None
