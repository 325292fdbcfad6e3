"""The scale report's fitness-vs-k figure: one panel per target, one colour per method,
solid = plain and dashed = with RHT, bands over seeds (min..max), light bands the 95% evaluation-noise
interval of the curves without RHT (where the run kept per-example scores), the base model at k=0 and Theorem 1's k
(general form, uniform weights, the run's first order). (Generic plots, e.g. weight histograms, come from ``evomerge.analysis.figures``.)"""

from __future__ import annotations

from pathlib import Path
from typing import Collection

import pandas as pd
from matplotlib.figure import Figure

from evomerge.analysis.figures import draw_fitness_curves, summarize_by_k
from evomerge.io import save_png_atomic

TITLES = {"all": "all tasks of the pool", "union": "tasks of the k merged experts"}


def plot_fitness_panels(fitness: pd.DataFrame, out_png: str | Path, *, n_max: int,
                        split: str = "validation", ylabel: str = "mean task score",
                        noise: pd.DataFrame | None = None, incomplete: Collection[tuple[str, bool]] = ()) -> Path:
    """``noise``: the rows of tables/noise.parquet; where given, each curve without RHT gets its
    95% evaluation-noise interval as a light band (with RHT the curves lie on top of these).
    ``incomplete``: the ``(method, rht)`` curves with missing cells, drawn as points without a
    line, a seed band or a noise band (each would join the measured k across the ones that are
    not); the points of such a curve with RHT are open."""
    f = fitness[fitness["split"] == split]
    methods = sorted(m for m in f["method"].unique() if m not in ("base", "expert"))
    cmap = [f"C{i}" for i in range(10)]
    colors = {m: cmap[i % 10] for i, m in enumerate(methods)}
    fig = Figure(figsize=(12, 4.4))
    axes = [fig.add_subplot(1, 2, i + 1) for i in range(2)]
    base = f[(f["method"] == "base") & (f["target"] == "all")]["fitness"]
    for ax, target in zip(axes, ("all", "union")):
        t = f[f["target"] == target]
        merged = t[t["method"].isin(methods)].assign(label=lambda d: d["method"] + d["rht"].map({True: " + RHT", False: ""}))
        if target == "all" and not base.empty:
            merged = with_base_start(merged, base)
        if not merged.empty:
            curves = summarize_by_k(merged[["label", "k", "fitness"]], method_col="label")
            order = [f"{m}{r}" for m in methods for r in ("", " + RHT") if f"{m}{r}" in curves]
            styles = {lab: {"color": colors[lab.removesuffix(" + RHT")], "ls": "--" if lab.endswith("RHT") else "-",
                            "ms": 3, "band_alpha": 0.08 if lab.endswith("RHT") else 0.15} for lab in order}
            broken = {f"{m}{' + RHT' if rht else ''}" for m, rht in incomplete}
            shown = {lab: f"{lab} (cells missing)" if lab in broken else lab for lab in order}
            for lab in broken & set(order):  # points only: no line, no band joining the measured k across a missing one
                styles[lab].update(ls="none", band_alpha=0)
                if lab.endswith(" + RHT"):  # open markers: without the line style, plain and RHT would look alike
                    styles[lab]["mfc"] = "none"
            draw_fitness_curves(ax, {shown[lab]: curves[lab] for lab in order},
                                {shown[lab]: styles[lab] for lab in order})
            banded = [m for m in methods if m not in broken]  # (the noise bands are the curves without RHT)
            if _noise_bands(ax, noise, split, target, banded, colors) and target == "all":
                ax.fill_between([], [], [], color="0.5", alpha=0.12, lw=0, label="95% evaluation-noise interval")
        single = t[t["method"] == "expert"]
        if not single.empty:
            ax.scatter([1], [single["fitness"].mean()], marker="*", s=120, color="k", zorder=5, label="first expert alone")
        if target == "all" and not base.empty:
            ax.axhline(base.mean(), color="0.5", ls=":", lw=1, label="base model (k=0)")
        ax.axvline(n_max, color="tab:red", ls=":", lw=1.4, label=f"Theorem 1 (eq. 18, uniform weights): k = {n_max}")
        ks = sorted(int(k) for k in t["k"].unique()) + ([0] if target == "all" and not base.empty else [])
        if ks:
            ax.set_xticks(range(min(ks), max(ks) + 1))
        ax.set(xlabel="experts merged (k)", ylabel=f"{split} {ylabel}", title=TITLES[target])
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    return save_png_atomic(fig, out_png)


def with_base_start(curves: pd.DataFrame, base: pd.Series) -> pd.DataFrame:
    """The base model's scores as k = 0 points of every line measured at k = 1 (labels in
    ``label``); a line that starts later (a search, from k = 2) is left to start there: a segment
    from the base through k = 1 would look like a measured point."""
    starts = [{"label": label, "k": 0, "fitness": v} for label in curves[curves["k"] == 1]["label"].unique()
              for v in base]
    return pd.concat([curves, pd.DataFrame(starts)], ignore_index=True) if starts else curves


def _noise_bands(ax, noise: pd.DataFrame | None, split: str, target: str, methods: list[str], colors: dict) -> bool:
    """Per method without RHT: low..high of its points on ``split`` / ``target`` (on `all`, from
    the base model's interval at k = 0, where its line starts). Whether any band was drawn."""
    if noise is None or noise.empty:
        return False
    drawn = False
    n = noise[(noise["split"] == split) & (noise["target"] == target) & ~noise["rht"].astype(bool)].dropna(subset=["low"])
    base = n[n["method"] == "base"]
    for m in methods:
        g = pd.concat([base, n[n["method"] == m]]) if target == "all" else n[n["method"] == m]
        g = g.sort_values("k")
        if len(g) > 1 and (g["method"] == m).any():
            ax.fill_between(g["k"], g["low"], g["high"], color=colors[m], alpha=0.07, lw=0)
            drawn = True
    return drawn
