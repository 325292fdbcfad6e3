"""The scale report's own figures: fitness vs k, and the merged weights' histograms.

The histograms need only the weight samples on disk, so a fresh run draws them in a process of
its own (:func:`warm_histograms`, started once the searches are over: its imports happen while
the last cells run) while the driver shuts Ray down, fits the laws, writes the tables and draws the fitness
figure; ``evomerge report`` draws everything in its own process. Same files either way.
The side process reads only the samples its histograms show (each method's largest k), and
the driver imports the report's modules and sets up matplotlib's fonts in a thread while the
last cells run, so neither is left for the end of the run.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pandas as pd

from evomerge.analysis.figures import plot_weight_histograms
from evomerge.pipelines.scale.plan import load_cells  # (torch, through the theory: imported while warm)
from evomerge.pipelines.scale.report import load_plan
from evomerge.pipelines.scale.store import CellStore
from evomerge.pipelines.scale.figures import plot_fitness_panels
from evomerge.pipelines.scale.side import SideJob


def fitness_figure(plan: dict, fitness: pd.DataFrame, fig_dir: Path, metric: str,
                   noise: pd.DataFrame | None = None) -> dict[str, str]:
    """``figures/fitness_vs_k.png`` (none without scores), with the validation curves' 95%
    evaluation-noise bands where ``noise`` (tables/noise.parquet) has them; ``{name: path
    relative to RUN}``."""
    if fitness.empty:
        return {}
    if _warming is not None:  # drawing waits for the fonts set up beside the last cells
        _warming.join()
    plot_fitness_panels(fitness[fitness["kind"] != "pair"], fig_dir / "fitness_vs_k.png", n_max=plan["stop"]["n_max"],
                        ylabel=f"{metric} (mean over tasks)", noise=noise)
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
    run_dir = Path(run_dir)
    return weight_histograms(histogram_samples(run_dir), run_dir / "figures")


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


_warming: threading.Thread | None = None


def _warm_report() -> None:
    """The report's imports and matplotlib's first drawing (its font set-up), done ahead."""
    import io

    from matplotlib.figure import Figure

    import evomerge.pipelines.scale.report  # noqa: F401
    import evomerge.pipelines.scale.report_md  # noqa: F401
    import evomerge.pipelines.scale.rules  # noqa: F401

    fig = Figure(figsize=(2, 1))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], label="x")
    ax.set(xlabel="k", ylabel="fitness", title="t")
    ax.legend()
    fig.savefig(io.BytesIO(), format="png")


def warm_histograms() -> SideJob:
    """A child process with the figures' imports done; ``.send(str(run_dir))`` once every cell
    is on disk draws the histograms (``.cancel()`` if the run ends otherwise). Also warms this
    process for the report (:func:`_warm_report`, in a thread)."""
    global _warming
    if _warming is None:
        _warming = threading.Thread(target=_warm_report, name="report-warm-up", daemon=True)
        _warming.start()
    return SideJob.warm(run_histograms)
