"""The pool analysis's heatmaps print each matrix in its own number format, readably.

The figures are caught as ``analyze_pool`` saves them (``figures._save`` wrapped) and their text
artists compared with numbers computed here with numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evomerge.analysis import analyze_pool
from evomerge.analysis import figures as afig


def _linear(c: float) -> float:
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def wcag_luminance(rgb) -> float:
    r, g, b = (_linear(float(c)) for c in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a, b) -> float:
    la, lb = sorted((wcag_luminance(a), wcag_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


@pytest.fixture
def caught(monkeypatch):
    """Every Figure the analysis saves, by title of its first axes."""
    figs = {}
    real = afig._save

    def keep(fig, path):
        figs[fig.axes[0].get_title()] = fig
        return real(fig, path)

    monkeypatch.setattr(afig, "_save", keep)
    return figs


def pool(seed: int = 0, n: int = 6) -> list[dict[str, torch.Tensor]]:
    """Task-vector dicts with weak positive correlations (a shared component), one 2-D key."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(40, 30, generator=g, dtype=torch.float64)
    return [{"model.layers.0.q.weight": 0.3 * shared + torch.randn(40, 30, generator=g, dtype=torch.float64)}
            for _ in range(n)]


def cell_texts(fig) -> dict[tuple[int, int], object]:
    ax = fig.axes[0]
    return {(round(t.get_position()[1]), round(t.get_position()[0])): t for t in ax.texts}


def test_correlation_cells_in_two_decimals_and_readable(tmp_path, caught):
    tvs = pool()
    analyze_pool(tvs, tmp_path / "a", progress=False)
    flat = np.stack([t["model.layers.0.q.weight"].numpy().ravel() for t in tvs])
    corr = np.corrcoef(flat)  # independent of the analysis's streaming Gram matrix
    off = corr[~np.eye(len(tvs), dtype=bool)]
    assert 0.02 < off.min() and off.max() < 0.3  # the case of the audit: all would print as "0"
    fig = caught["Pearson correlation of task vectors"]
    texts = cell_texts(fig)
    assert len(texts) == corr.size
    for (i, j), t in texts.items():
        assert t.get_text() == f"{corr[i, j]:.2f}"
    assert texts[(0, 0)].get_text() == "1.00"
    # the colour range shows the spread: symmetric around 0, its edge at the largest |off-diagonal| value
    lo, hi = fig.axes[0].images[0].get_clim()
    assert hi == pytest.approx(np.abs(off).max(), rel=1e-6) and lo == -hi
    # each number readable on its cell (WCAG contrast >= 3, large-text level)
    im = fig.axes[0].images[0]
    for (i, j), t in texts.items():
        cell = im.cmap(im.norm(corr[i, j]))
        assert contrast(cell, t.get_color() if not isinstance(t.get_color(), str) else _rgb(t.get_color())) >= 3


def _rgb(name: str):
    from matplotlib.colors import to_rgb

    return to_rgb(name)


def test_angle_cells_in_whole_degrees(tmp_path, caught):
    tvs = pool(1, n=4)
    analyze_pool(tvs, tmp_path / "a", progress=False, angle_rank=8)  # (30 columns: exact SVD)
    ang = {}
    for i in range(4):
        for j in range(4):
            if i == j:
                ang[i, j] = 0.0
                continue
            ui = np.linalg.svd(tvs[i]["model.layers.0.q.weight"].numpy())[0][:, :8]
            uj = np.linalg.svd(tvs[j]["model.layers.0.q.weight"].numpy())[0][:, :8]
            s = np.clip(np.linalg.svd(ui.T @ uj, compute_uv=False), 0, 1)
            ang[i, j] = float(np.degrees(np.arccos(s)).mean())
    fig = next(f for title, f in caught.items() if title.startswith("mean principal angle"))
    texts = cell_texts(fig)
    assert texts.keys() == ang.keys()
    for k, t in texts.items():  # whole degrees (the analysis works in float32: a rounding boundary may differ)
        assert t.get_text().isdigit() and abs(int(t.get_text()) - ang[k]) <= 0.5 + 1e-3
    im = fig.axes[0].images[0]
    for (i, j), t in texts.items():
        assert contrast(im.cmap(im.norm(ang[i, j])), _rgb(t.get_color())) >= 3


def test_symmetric_limit():
    m = np.array([[1.0, -0.4, 0.1], [-0.4, 1.0, np.nan], [0.1, np.nan, 1.0]])
    assert afig.symmetric_limit(m) == pytest.approx(0.4)
    assert afig.symmetric_limit(np.eye(3)) == 1.0
