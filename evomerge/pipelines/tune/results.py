"""Study outputs: every trial as Parquet, history/importance PNGs, the best config as YAML."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from evomerge.io import write_parquet_atomic
from evomerge.pipelines.tune.files import HISTORY_FIGURE, IMPORTANCE_FIGURE, figure_file


def trials_table(study):
    """One row per trial: number, state, value, duration, ``param.<name>``, ``attr.<name>``.

    Parameters and attributes with mixed types (a categorical of strings and numbers) are stored
    as JSON text so the table keeps a fixed schema.
    """
    import pyarrow as pa

    trials = study.get_trials(deepcopy=False)
    params = sorted({k for t in trials for k in t.params})
    attrs = sorted({k for t in trials for k in t.user_attrs})
    cols: dict[str, list[Any]] = {
        "number": [t.number for t in trials],
        "state": [t.state.name for t in trials],
        "value": [t.value if t.values else None for t in trials],
        "datetime_start": [t.datetime_start for t in trials],
        "duration_s": [t.duration.total_seconds() if t.duration else None for t in trials],
        "last_step": [t.last_step for t in trials],
        "intermediate_values": [json.dumps({str(k): v for k, v in sorted(t.intermediate_values.items())}) for t in trials],
    }
    for p in params:
        cols[f"param.{p}"] = _column([t.params.get(p) for t in trials])
    for a in attrs:
        cols[f"attr.{a}"] = _column([t.user_attrs.get(a) for t in trials])
    return pa.table(cols)


def _column(values: list[Any]) -> list[Any]:
    kinds = {type(v) for v in values if v is not None}
    if kinds <= {int, float} or kinds <= {str} or kinds <= {bool}:
        return values
    return [None if v is None else json.dumps(v, default=str) for v in values]


def export_trials(study, path: str | Path) -> Path:
    write_parquet_atomic(path, trials_table(study))
    return Path(path)


def write_figures(study, out_dir: str | Path) -> dict[str, str]:
    """Optimisation history and parameter importance as PNG; returns {figure: path or reason skipped}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done: dict[str, str] = {}
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    plots = {HISTORY_FIGURE: ovm.plot_optimization_history, IMPORTANCE_FIGURE: ovm.plot_param_importances}
    # optuna's matplotlib plots call plt.style.use("ggplot"), which would restyle every later
    # figure of this process (e.g. a scale report drawn after a study): the style stays inside
    with matplotlib.rc_context():
        for name, fn in plots.items():
            if name == IMPORTANCE_FIGURE and len(complete) < 2:
                done[name] = "skipped: needs at least 2 complete trials"
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    warnings.simplefilter("ignore", UserWarning)  # importance of near-constant studies
                    ax = fn(study)
                fig = getattr(ax, "figure", None) or plt.gcf()
                path = out_dir / figure_file(name)
                _save_png(fig, path)
                plt.close("all")
                done[name] = str(path)
            except Exception as err:  # e.g. importance of a space whose params never varied
                plt.close("all")
                done[name] = f"skipped: {type(err).__name__}: {err}"
    return done


def _save_png(fig, path: Path) -> None:
    from evomerge.io import save_png_atomic

    fig.tight_layout()
    save_png_atomic(fig, path, tight_bbox=False)
