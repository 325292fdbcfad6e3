"""`evomerge tune`'s figures must not restyle the figures drawn after them in the same process:
optuna's matplotlib plots call ``plt.style.use("ggplot")`` (a scale report drawn after a study
in one process once came out in another size)."""

from __future__ import annotations

import matplotlib
import optuna

from evomerge.pipelines.tune.results import write_figures


def test_study_figures_leave_matplotlib_style_alone(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(lambda t: (t.suggest_float("x", -1, 1) - 0.3) ** 2 + t.suggest_float("y", 0, 1), n_trials=6)
    matplotlib.use("Agg")  # write_figures picks the file backend itself: not a style
    before = dict(matplotlib.rcParams)
    done = write_figures(study, tmp_path / "figs")
    assert (tmp_path / "figs" / "optimization_history.png").is_file(), done
    assert (tmp_path / "figs" / "param_importances.png").is_file(), done
    changed = {k for k, v in matplotlib.rcParams.items() if str(before.get(k)) != str(v)}
    assert not changed, sorted(changed)[:10]
    # the same plot without the guard does change the style: the check can fail
    from optuna.visualization import matplotlib as ovm

    with matplotlib.rc_context():
        ovm.plot_optimization_history(study)
        assert matplotlib.rcParams["axes.facecolor"] != before["axes.facecolor"]
        matplotlib.pyplot.close("all")
