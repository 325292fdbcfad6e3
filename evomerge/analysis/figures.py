"""PNG figures for the pool analysis and the fitness-vs-k report.

Figures are built on ``matplotlib.figure.Figure`` (Agg canvas, no pyplot global state) and
written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from evomerge.errors import ConfigError
from evomerge.io import save_png_atomic
from evomerge.theory.geometry import pca_ceiling_note, threshold_reached_at


def _save(fig: Figure, path: str | Path) -> Path:
    return save_png_atomic(fig, path)


def plot_pca_cumulative(cum: Sequence[float], out_png: str | Path, threshold: float = 0.95) -> Path:
    """Cumulative explained variance vs number of components (one entry per expert), with the
    threshold line; the title says when the count is the n - 1 ceiling."""
    cum = np.asarray(cum, dtype=float)
    fig = Figure(figsize=(5, 3.6))
    ax = fig.add_subplot()
    comps = np.arange(1, cum.size + 1)
    ax.plot(comps, cum, marker="o")
    ax.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"{threshold:.0%}")
    count = threshold_reached_at(cum, threshold)
    title = "PCA of task vectors"
    if count is not None:  # the threshold is reached (not a flat pool)
        ax.axvline(count, color="tab:gray", ls=":", lw=1, label=f"{count} components")
        note = pca_ceiling_note(count, cum.size)  # (one entry per expert)
        title += f"\n{threshold:.0%} needs {count}, {note}" if note else ""
    ax.set(xlabel="principal components (experts as samples)", ylabel="cumulative explained variance",
           ylim=(0, 1.02), title=title)
    ax.set_xticks(comps)
    ax.legend(loc="lower right")
    return _save(fig, out_png)


def heatmap_figure(matrix: np.ndarray, names: Sequence[str], *, title: str, label: str, fmt: str,
                   vmin: float | None = None, vmax: float | None = None, cmap: str = "viridis",
                   marks: Sequence[float] = ()) -> Figure:
    """Annotated expert x expert heatmap: each cell's value in ``fmt`` (e.g. ``.2f`` for a
    correlation, ``.0f`` for degrees), dark text on light cells and white on dark ones.
    ``marks``: values drawn as dashed lines across the colour bar (e.g. a reference level the
    title names)."""
    m = np.asarray(matrix, dtype=float)
    n = m.shape[0]
    size = max(4.0, 0.55 * n + 2)
    fig = Figure(figsize=(size, size * 0.85))
    ax = fig.add_subplot()
    im = ax.imshow(m, vmin=vmin, vmax=vmax, cmap=cmap)
    bar = fig.colorbar(im, ax=ax, label=label)
    for value in marks:
        bar.ax.axhline(value, color="k", lw=1.5, ls="--")
    ax.set_xticks(range(n), [s[:14] for s in names], rotation=60, ha="right")
    ax.set_yticks(range(n), [s[:14] for s in names])
    if n <= 16:
        for i in range(n):
            for j in range(n):
                if np.isfinite(m[i, j]):
                    r, g, b, _ = im.cmap(im.norm(m[i, j]))
                    dark_text = 0.299 * r + 0.587 * g + 0.114 * b > 0.5  # (perceived luminance of the cell)
                    ax.text(j, i, format(m[i, j], fmt), ha="center", va="center", fontsize=7,
                            color="k" if dark_text else "w")
    ax.set_title(title)
    return fig


def plot_heatmap(matrix: np.ndarray, names: Sequence[str], out_png: str | Path, **kwargs: Any) -> Path:
    """:func:`heatmap_figure`, written to ``out_png``."""
    return _save(heatmap_figure(matrix, names, **kwargs), out_png)


def symmetric_limit(matrix: np.ndarray) -> float:
    """The largest |off-diagonal| finite entry (1 if there is none): a colour range symmetric
    around 0 that shows a correlation matrix's spread (its unit diagonal then sits at the top)."""
    m = np.asarray(matrix, dtype=float)
    off = np.abs(m[~np.eye(m.shape[0], dtype=bool)])
    off = off[np.isfinite(off)]
    return float(off.max()) if off.size and off.max() > 0 else 1.0


def plot_variance_floor(rows: Sequence[Mapping[str, Any]], out_png: str | Path, *, n_stop: int,
                        delta: float, floor: float) -> Path:
    """Theoretical merged variance vs k, the floor ``sigma^2 max(rho, 0)`` and the stop point; the drop
    per added expert against ``delta`` on a second panel."""
    k = np.array([r["k"] for r in rows])
    v = np.array([r["merged_variance"] for r in rows])
    drop = np.array([r["drop"] for r in rows], dtype=float)
    fig = Figure(figsize=(9, 3.6))
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ax1.plot(k, v, marker="o", label="sigma^2 (rho + (1-rho)/k)")
    ax1.axhline(floor, color="tab:gray", ls="--", lw=1, label="floor sigma^2 max(rho, 0)")
    ax1.axvline(n_stop, color="tab:red", ls=":", lw=1.2, label=f"stop k = {n_stop}")
    ax1.set(xlabel="experts merged (k)", ylabel="merged variance", title="variance floor (Theorem 1)")
    ax1.legend(fontsize=8)
    ax2.plot(k[1:], drop[1:], marker="o", label="drop from k-1 to k")
    ax2.axhline(delta, color="tab:red", ls="--", lw=1, label=f"Delta = {delta:.3g}")
    ax2.axvline(n_stop, color="tab:red", ls=":", lw=1.2)
    if np.any(drop[1:] > 0):  # all drops 0 (rho = 1: identical experts): no log scale to draw
        ax2.set_yscale("log")
    ax2.set(xlabel="experts merged (k)", ylabel="variance drop", title="marginal gain")
    ax2.legend(fontsize=8)
    return _save(fig, out_png)


def histogram_shares(samples: Mapping[str, np.ndarray], bins: int = 120) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, int]]]:
    """``(edges, {label: (share of its own finite entries per bin, their number)})`` on one
    symmetric grid over every sample: samples of different sizes (one cell of a deterministic
    merge against three seeds of RHT) compare by shape, not by count."""
    if not samples:
        raise ConfigError("plot_weight_histograms needs at least one sample")
    finite = {label: v[np.isfinite(v)] for label, v in ((lab, np.asarray(s, dtype=float).ravel())
                                                      for lab, s in samples.items())}
    lim = max((float(np.abs(v).max()) for v in finite.values() if v.size), default=0.0) or 1.0
    edges = np.linspace(-lim, lim, bins + 1)
    return edges, {label: (np.histogram(v, bins=edges)[0] / max(v.size, 1), int(v.size)) for label, v in finite.items()}


def same_size(samples: Mapping[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Each sample's finite entries, the larger ones subsampled (without replacement, ``rng``) to
    the smallest one's count: a sample three times as large reaches further into the tails by
    its size alone (the largest of 3n draws beats the largest of n three times in four)."""
    finite = {label: v[np.isfinite(v)] for label, v in ((lab, np.asarray(s, dtype=float).ravel())
                                                      for lab, s in samples.items())}
    n = min((v.size for v in finite.values()), default=0)
    return {label: v if v.size == n else v[np.sort(rng.choice(v.size, n, replace=False))] for label, v in finite.items()}


def plot_weight_histograms(samples: Mapping[str, np.ndarray], out_png: str | Path, bins: int = 120) -> Path:
    """Histograms (log-y) of sampled values, e.g. the uniform merge with and without RHT, each as
    the share of its own entries per bin (:func:`histogram_shares`; its count in the legend)."""
    edges, shares = histogram_shares(samples, bins)
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.add_subplot()
    for label, (share, n) in shares.items():
        if n:
            ax.stairs(share, edges, lw=1.3, label=f"{label} (n = {n})")
    ax.set_yscale("log")
    ax.set(xlabel="merged task-vector value", ylabel="share of entries per bin (log)", title="merged weights: tails")
    ax.legend(fontsize=8, loc="upper left")  # (log y: the upper corners are clear of the curves)
    return _save(fig, out_png)


def _rows(df_or_rows: Any) -> list[dict[str, Any]]:
    if hasattr(df_or_rows, "to_pylist"):  # pyarrow.Table
        return df_or_rows.to_pylist()
    if hasattr(df_or_rows, "to_dict"):  # pandas.DataFrame
        return df_or_rows.to_dict("records")
    return [dict(r) for r in df_or_rows]


def summarize_by_k(df_or_rows: Any, *, k_col: str = "k", value_col: str = "fitness",
                   method_col: str = "method") -> dict[str, dict[str, np.ndarray]]:
    """Per method (sorted): arrays ``k``, ``mean``, ``min``, ``max``, ``n`` of ``value_col``
    over the rows (seeds) at each k; non-finite values are skipped."""
    rows = _rows(df_or_rows)
    if not rows:
        raise ConfigError("no rows to plot")
    for col in (k_col, value_col):
        if col not in rows[0]:
            raise ConfigError(f"column `{col}` missing (have {sorted(rows[0])})")
    groups: dict[str, dict[float, list[float]]] = {}
    for r in rows:
        v = r[value_col]
        if v is None or not np.isfinite(v):
            continue
        groups.setdefault(str(r.get(method_col, "all")), {}).setdefault(float(r[k_col]), []).append(float(v))
    out = {}
    for method, by_k in sorted(groups.items()):
        ks = np.array(sorted(by_k))
        vals = [np.array(by_k[k]) for k in ks]
        out[method] = {"k": ks, "mean": np.array([v.mean() for v in vals]), "min": np.array([v.min() for v in vals]),
                       "max": np.array([v.max() for v in vals]), "n": np.array([v.size for v in vals])}
    return out


def draw_fitness_curves(ax, curves: Mapping[str, Mapping[str, np.ndarray]],
                        styles: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, str]:
    """Draw :func:`summarize_by_k` curves on ``ax``: the mean as a line with markers, the
    min-max spread over seeds as a band. ``styles[label]`` may set ``band_alpha`` (0: no band)
    and keywords of ``Axes.plot`` (``color``, ``ls``, ``ms``, ``mfc``, ...). Returns each label's colour."""
    colors = {}
    for label, c in curves.items():
        style = dict((styles or {}).get(label, {}))
        band_alpha = style.pop("band_alpha", 0.18)
        line, = ax.plot(c["k"], c["mean"], marker="o", ms=style.pop("ms", 4), label=label, **style)
        colors[label] = line.get_color()
        if band_alpha:
            ax.fill_between(c["k"], c["min"], c["max"], color=colors[label], alpha=band_alpha, lw=0)
    return colors


def plot_fitness_vs_k(
    df_or_rows: Any,
    out_png: str | Path,
    *,
    k_col: str = "k",
    value_col: str = "fitness",
    method_col: str = "method",
    stop_k: int | None = None,
    predicted_k: int | None = None,
    fits: Mapping[str, Any] | None = None,
    title: str = "fitness vs number of merged experts",
    ylabel: str | None = None,
) -> Path:
    """Mean (line) and min-max spread (band) of ``value_col`` vs ``k`` per method; the rows of
    one (method, k) are the seeds.

    ``df_or_rows``: a pyarrow Table, a pandas DataFrame or an iterable of dicts. ``stop_k``
    (the variance-drop stop rule) and ``predicted_k`` (e.g. from a scaling-law fit) are drawn as
    vertical lines; ``fits`` maps a method to a fitted :class:`~evomerge.theory.ScalingFit`
    whose ``predict_fitness`` is overlaid dashed.
    """
    curves = summarize_by_k(df_or_rows, k_col=k_col, value_col=value_col, method_col=method_col)
    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    colors = draw_fitness_curves(ax, curves)
    for method, c in curves.items():
        if fits and method in fits:
            ks = c["k"]
            kk = np.linspace(max(ks.min(), 1.0), ks.max(), 100)  # the law is defined for k >= 1
            ax.plot(kk, fits[method].predict_fitness(kk), ls="--", lw=1, color=colors[method])
    if stop_k is not None:
        ax.axvline(stop_k, color="tab:red", ls=":", lw=1.3, label=f"stop rule k = {stop_k}")
    if predicted_k is not None:
        ax.axvline(predicted_k, color="tab:purple", ls="--", lw=1.1, label=f"predicted k = {predicted_k}")
    ax.set(xlabel="experts merged (k)", ylabel=ylabel or value_col, title=title)
    ax.legend(fontsize=8)
    return _save(fig, out_png)
