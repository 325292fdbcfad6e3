"""The scale report's own figures: fitness vs k, and the merged weights' histograms.

The histograms need only the weight samples on disk, so a fresh run draws them in a process of
its own (:func:`warm_histograms`, started once the searches are over: its imports happen while
the last cells run) while the driver shuts Ray down, fits the laws, writes the tables and draws the fitness
figure; ``evomerge report`` draws everything in its own process. Same files either way.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from evomerge.analysis.figures import plot_weight_histograms
from evomerge.pipelines.scale.figures import plot_fitness_panels
from evomerge.pipelines.scale.side import SideJob


def fitness_figure(plan: dict, fitness: pd.DataFrame, fig_dir: Path, metric: str) -> dict[str, str]:
    """``figures/fitness_vs_k.png`` (none without scores); ``{name: path relative to RUN}``."""
    if fitness.empty:
        return {}
    plot_fitness_panels(fitness[fitness["kind"] != "pair"], fig_dir / "fitness_vs_k.png", n_max=plan["stop"]["n_max"],
                        ylabel=f"{metric} (mean over tasks)")
    return {"fitness_vs_k": "figures/fitness_vs_k.png"}


def weight_histograms(samples: pd.DataFrame, fig_dir: Path) -> dict[str, str]:
    """Per method: entries of the merged task vector at the largest k, without and with RHT."""
    out = {}
    for method, s in samples.groupby("method"):
        k = int(s["k"].max())
        s = s[s["k"] == k]
        hist = {f"{method} k={k}" + (" + RHT" if rht else ""): g["value"].to_numpy()
                for rht, g in s.groupby("rht")}
        path = plot_weight_histograms(hist, fig_dir / f"weight_hist_{method}.png")
        out[f"weight_hist_{method}"] = f"figures/{path.name}"
    return out


def run_histograms(run_dir: str) -> dict[str, str]:
    """:func:`weight_histograms` of a run directory's samples (what the side process runs)."""
    from evomerge.pipelines.scale.report import load_plan, load_samples

    run_dir = Path(run_dir)
    return weight_histograms(load_samples(run_dir, load_plan(run_dir)), run_dir / "figures")


def warm_histograms() -> SideJob:
    """A child process with the figures' imports done; ``.send(str(run_dir))`` once every cell
    is on disk draws the histograms (``.cancel()`` if the run ends otherwise)."""
    return SideJob.warm(run_histograms)
