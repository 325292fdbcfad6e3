"""The scale report's own figures: fitness vs k, and the merged weights' histograms.

A fresh run draws them in a side process (:mod:`evomerge.pipelines.scale.report_side`): each
histogram as soon as its method's cells at the largest k are on disk, the fitness figure once
every cell is; ``evomerge report`` draws everything in its own process. Same files either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Collection

import pandas as pd

from evomerge.analysis.figures import plot_weight_histograms, same_size
from evomerge.pipelines.scale.plan import load_cells  # (torch, through the theory: imported while warm)
from evomerge.pipelines.scale.report import load_plan
from evomerge.pipelines.scale.store import CellStore
from evomerge.pipelines.scale.figures import plot_fitness_panels
from evomerge.seeding import derive_rng


def fitness_figure(plan: dict, fitness: pd.DataFrame, fig_dir: Path, metric: str,
                   noise: pd.DataFrame | None = None, incomplete: Collection[tuple[str, bool]] = ()) -> dict[str, str]:
    """``figures/fitness_vs_k.png`` (none without scores), with the validation curves' 95%
    evaluation-noise bands where ``noise`` (tables/noise.parquet) has them, the ``incomplete``
    curves (``(method, rht)``, cells missing) as points only; ``{name: path relative to RUN}``."""
    if fitness.empty:
        return {}
    plot_fitness_panels(fitness[fitness["kind"] != "pair"], fig_dir / "fitness_vs_k.png", n_max=plan["stop"]["n_max"],
                        ylabel=f"{metric} (mean over tasks)", noise=noise, incomplete=incomplete)
    return {"fitness_vs_k": "figures/fitness_vs_k.png"}


def weight_histograms(samples: pd.DataFrame, fig_dir: Path) -> dict[str, str]:
    """Per method: entries of the merged task vector at the largest k, without and with RHT, each
    curve from the same number of entries (:func:`~evomerge.analysis.figures.same_size`, seeded
    by the method: RHT has one cell per seed, a deterministic merge one cell in all)."""
    out = {}
    for method, s in samples.groupby("method"):
        k = int(s["k"].max())
        s = s[s["k"] == k]
        hist = {f"{method} k={k}" + (" + RHT" if rht else ""): g["value"].to_numpy()
                for rht, g in s.groupby("rht")}
        hist = same_size(hist, derive_rng("weight-hist", str(method), k))
        path = plot_weight_histograms(hist, fig_dir / f"weight_hist_{method}.png")
        out[f"weight_hist_{method}"] = f"figures/{path.name}"
    return out


def histogram_samples(run_dir: Path) -> pd.DataFrame:
    """The rows of the run's samples that :func:`weight_histograms` shows (each method's cells at
    its largest k with samples), in the order the whole table has them, reading only those
    files (a default run has about 190 sample files; the histograms show about 30)."""
    store = CellStore(run_dir)
    folder = store.samples_dir
    have = {p.stem for p in folder.glob("*.parquet")} if folder.is_dir() else set()
    by_method: dict[str, dict[int, list[str]]] = {}
    for cell in load_cells(load_plan(run_dir)):
        if cell.id in have:
            by_method.setdefault(cell.method, {}).setdefault(cell.k, []).append(cell.id)
    return store.samples(i for ks in by_method.values() for i in ks[max(ks)]).to_pandas()
