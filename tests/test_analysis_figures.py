"""The fitness-vs-k figure and its per-(method, k) summary across seeds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from matplotlib.image import imread

from evomerge.analysis import plot_fitness_vs_k
from evomerge.analysis.figures import histogram_shares, plot_weight_histograms, summarize_by_k
from evomerge.errors import ConfigError
from evomerge.theory import fit_fitness_scaling

ROWS = [
    {"method": "ties", "k": 1, "seed": 0, "fitness": 0.50},
    {"method": "ties", "k": 1, "seed": 1, "fitness": 0.54},
    {"method": "ties", "k": 2, "seed": 0, "fitness": 0.60},
    {"method": "ties", "k": 2, "seed": 1, "fitness": 0.64},
    {"method": "ties", "k": 2, "seed": 2, "fitness": float("nan")},  # a failed cell is skipped
    {"method": "task_arithmetic", "k": 1, "seed": 0, "fitness": 0.40},
    {"method": "task_arithmetic", "k": 3, "seed": 0, "fitness": 0.70},
]


def test_summarize_by_k_hand_values():
    c = summarize_by_k(ROWS)
    assert list(c) == ["task_arithmetic", "ties"]
    np.testing.assert_allclose(c["ties"]["k"], [1, 2])
    np.testing.assert_allclose(c["ties"]["mean"], [0.52, 0.62])
    np.testing.assert_allclose(c["ties"]["min"], [0.50, 0.60])
    np.testing.assert_allclose(c["ties"]["max"], [0.54, 0.64])
    np.testing.assert_array_equal(c["ties"]["n"], [2, 2])
    np.testing.assert_allclose(c["task_arithmetic"]["k"], [1, 3])
    # the same from a DataFrame and a pyarrow Table
    for other in (pd.DataFrame(ROWS), pa.Table.from_pylist(ROWS)):
        o = summarize_by_k(other)
        np.testing.assert_allclose(o["ties"]["mean"], c["ties"]["mean"])


def test_plot_fitness_vs_k_writes_png(tmp_path):
    k = np.repeat(np.arange(0, 9), 2)
    fit_k = k[k >= 1]
    rows = [{"label": "ties", "k": int(a), "fitness": 0.8 - 0.3 / max(a, 1) ** 1.1 + 0.01 * (i % 2)} for i, a in enumerate(k)]
    fit = fit_fitness_scaling(fit_k, [r["fitness"] for r in rows if r["k"] >= 1])
    out = plot_fitness_vs_k(pd.DataFrame(rows), tmp_path / "f" / "fit.png", method_col="label", stop_k=3,
                            predicted_k=5, fits={"ties": fit}, ylabel="accuracy")
    img = imread(out)
    assert out.is_file() and img.shape[0] > 200 and img.shape[1] > 300
    assert not list((tmp_path / "f").glob(".*tmp*"))


def test_plot_errors_and_histograms(tmp_path):
    with pytest.raises(ConfigError, match="fitness"):
        plot_fitness_vs_k([{"k": 1, "score": 0.3}], tmp_path / "x.png")
    with pytest.raises(ConfigError, match="no rows"):
        plot_fitness_vs_k([], tmp_path / "x.png")
    rng = np.random.default_rng(0)
    p = plot_weight_histograms({"a": rng.standard_normal(1000), "b": rng.laplace(size=1000)}, tmp_path / "h.png")
    assert p.read_bytes()[:4] == b"\x89PNG"


def test_histogram_shares_compare_samples_of_different_sizes_by_shape():
    """One sample three times as large as another with the same values: equal shares per bin
    (counts would differ threefold); each sums to 1 over its finite entries; the grid is
    symmetric and covers both."""
    rng = np.random.default_rng(1)
    one = rng.standard_normal(4100)
    three = np.concatenate([one, one, one, [np.nan]])
    edges, shares = histogram_shares({"plain": one, "rht": three}, bins=40)
    assert edges[0] == -edges[-1] == pytest.approx(-np.abs(one).max())
    (a, na), (b, nb) = shares["plain"], shares["rht"]
    assert (na, nb) == (4100, 12300)
    np.testing.assert_allclose(a, b)
    assert a.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(a * na, np.histogram(one, bins=edges)[0])


def test_scale_figure_starts_at_the_base_only_the_lines_measured_at_k1():
    """The fitness figure's left panel: registry merges (k = 1..) start at the base model (k = 0);
    a search (k = 2..) does not get a segment through k = 1, where nothing was measured."""
    import pandas as pd

    from evomerge.pipelines.scale.figures import with_base_start

    curves = pd.DataFrame([{"label": "ties", "k": k, "fitness": 0.5 + k / 100} for k in (1, 2, 3)]
                          + [{"label": "genome", "k": k, "fitness": 0.6} for k in (2, 3)])
    out = with_base_start(curves, pd.Series([0.50, 0.51]))
    starts = out[out["k"] == 0]
    assert sorted(starts["label"]) == ["ties", "ties"] and sorted(starts["fitness"]) == [0.50, 0.51]
    assert out[out["label"] == "genome"]["k"].min() == 2
    assert len(out) == len(curves) + 2
    assert with_base_start(curves[curves["label"] == "genome"], pd.Series([0.5])).equals(curves[curves["label"] == "genome"])


def test_scale_figure_draws_a_curve_with_missing_cells_as_points_only(tmp_path, monkeypatch):
    """A curve the report leaves out (cells missing) is drawn without a line: a line would join
    k = 1 and k = 3 across the k = 2 that was not measured; nor do its seed band and its noise
    band join them; its RHT variant has open markers (no line style tells it from the plain one).
    The other curves keep their lines and bands."""
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import to_rgba

    from evomerge.pipelines.scale import figures as scale_figures

    drawn = []
    monkeypatch.setattr(scale_figures, "save_png_atomic", lambda fig, path: drawn.append(fig) or path)
    rows = [{"method": m, "rht": rht, "k": k, "seed": seed, "split": "validation", "target": t, "kind": "merge",
             "fitness": 0.5 + k / 100 + seed / 50} for m, ks in (("ties", (1, 2, 3)), ("task_arithmetic", (1, 3)))
            for rht in (False, True) for k in ks for seed in (0, 1) for t in ("all", "union")]
    noise = pd.DataFrame([{"method": m, "rht": False, "k": k, "split": "validation", "target": t, "value": 0.5,
                           "low": 0.45, "high": 0.55} for m, ks in (("ties", (1, 2, 3)), ("task_arithmetic", (1, 3)))
                          for k in ks for t in ("all", "union")])
    scale_figures.plot_fitness_panels(pd.DataFrame(rows), tmp_path / "f.png", n_max=3, noise=noise,
                                      incomplete=[("task_arithmetic", False), ("task_arithmetic", True)])
    for ax in drawn[0].axes:
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert lines["ties"].get_linestyle() == "-" and lines["ties + RHT"].get_linestyle() == "--"
        gap, gap_rht = lines["task_arithmetic (cells missing)"], lines["task_arithmetic + RHT (cells missing)"]
        for g in (gap, gap_rht):
            assert g.get_linestyle() == "None" and list(g.get_xdata()) == [1, 3] and g.get_marker() == "o"
        assert "task_arithmetic" not in lines and "task_arithmetic + RHT" not in lines
        assert gap.get_markerfacecolor() == gap.get_color() and gap_rht.get_markerfacecolor() == "none"
        assert lines["ties + RHT"].get_markerfacecolor() == lines["ties + RHT"].get_color()
        # bands (seeds' and noise's): the two ties curves' and the noise band of ties, none of task_arithmetic
        bands = [tuple(c.get_facecolor()[0][:3]) for c in ax.collections
                 if isinstance(c, PolyCollection) and c.get_label().startswith("_")]  # (not the legend's entry)
        assert sorted(bands) == [to_rgba(lines["ties"].get_color())[:3]] * 3, bands


def test_pca_figure_marks_the_count_only_where_the_threshold_is_reached(tmp_path, monkeypatch):
    """The vertical line and the title's count where the threshold is reached (geometry's
    threshold_reached_at); none for a pool without variance, whose count is 0."""
    from evomerge.analysis import figures

    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig) or path)
    figures.plot_pca_cumulative([0.6, 1.0, 1.0], tmp_path / "p.png")
    figures.plot_pca_cumulative([0.0, 0.0, 0.0], tmp_path / "q.png")
    reached, flat = ({line.get_label() for line in f.axes[0].get_lines()} for f in drawn)
    assert "2 components" in reached and "95% needs 2" in drawn[0].axes[0].get_title()
    assert not any(label.endswith("components") for label in flat) and "needs" not in drawn[1].axes[0].get_title()
