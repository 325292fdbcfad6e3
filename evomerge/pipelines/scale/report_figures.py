"""The scale report's own figures (fitness vs k, the merged weights' histograms).

They read only what the run left on disk, so a fresh run draws them in a process of its own
(:func:`warm_figures`, started with the run: its imports happen while the cores have room)
while the driver shuts Ray down and computes the report's fits and tables; ``evomerge report``
draws them in its own process (:func:`draw`). Same files either way.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from evomerge.analysis.figures import plot_weight_histograms
from evomerge.pipelines.scale.figures import plot_fitness_panels
from evomerge.pipelines.scale.side import SideJob


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


def draw(plan: dict, fitness: pd.DataFrame, samples: pd.DataFrame, fig_dir: Path, metric: str) -> dict[str, str]:
    """The figures of ``RUN/figures``; returns ``{name: path relative to RUN}`` in report order."""
    figures: dict[str, str] = {}
    if not fitness.empty:
        plot_fitness_panels(fitness[fitness["kind"] != "pair"], fig_dir / "fitness_vs_k.png", n_max=plan["stop"]["n_max"],
                            ylabel=f"{metric} (mean over tasks)")
        figures["fitness_vs_k"] = "figures/fitness_vs_k.png"
    if not samples.empty:
        figures.update(weight_histograms(samples, fig_dir))
    return figures


def draw_run(run_dir: str) -> dict[str, str]:
    """:func:`draw` on a run directory's files (what the side process runs)."""
    from evomerge.config import load_config
    from evomerge.pipelines.scale.report import load_run
    from evomerge.pipelines.scale.tables import fitness_table

    run_dir = Path(run_dir)
    plan, scores, samples = load_run(run_dir)
    metric = load_config(run_dir / "config.yaml").evaluation.metric
    return draw(plan, fitness_table(scores), samples, run_dir / "figures", metric)


def warm_figures() -> SideJob:
    """A child process with the figures' imports done; ``.send(str(run_dir))`` once every cell
    is on disk draws them (``.cancel()`` if the run ends otherwise)."""
    return SideJob.warm(draw_run)
