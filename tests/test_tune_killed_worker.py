"""A tune worker SIGKILLed in the middle of a trial, on real SQLite and journal storages.

The resumed worker must fail the killed trial and retry its parameters, keep the study's
budget (no trial lost), and draw new parameters (no repeat of trial 0).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import optuna
import pytest

from evomerge.pipelines.tune.storage import open_storage
from evomerge.pipelines.tune.study import make_pruner, make_sampler, n_finished, open_study, recording_errors, run_study, \
    sampler_seed

optuna.logging.set_verbosity(optuna.logging.ERROR)

WORKER = textwrap.dedent("""
    import sys, time, pathlib
    from evomerge.pipelines.tune.storage import open_storage
    from evomerge.pipelines.tune.study import make_pruner, make_sampler, open_study, recording_errors, run_study
    url, marker = sys.argv[1], pathlib.Path(sys.argv[2])
    study = open_study(open_storage(url), "s", "fp", resume=False, sampler=make_sampler("random", 7),
                       pruner=make_pruner("none", 1), shown_url=url)
    def objective(trial):
        x = trial.suggest_float("x", 0.0, 1.0)
        if trial.number == 2:
            marker.write_text(str(x))
            time.sleep(600)  # killed here, mid-trial
        return x
    run_study(study, recording_errors(objective), n_trials=5, timeout=None)
""")


def _objective(trial):
    return trial.suggest_float("x", 0.0, 1.0)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_killed_trial_is_failed_retried_and_the_sampler_continues(tmp_path, kind) -> None:
    url = f"sqlite:///{tmp_path}/s.db" if kind == "sqlite" else f"journal://{tmp_path}/s.log"
    marker = tmp_path / "in_trial_2"
    proc = subprocess.Popen([sys.executable, "-c", WORKER, url, str(marker)], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    t0 = time.time()
    while not marker.exists():
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.time() - t0 < 120, "the worker never reached trial 2"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_x = float(marker.read_text())

    storage = open_storage(url)
    before = optuna.load_study(study_name="s", storage=storage)
    assert [t.state.name for t in before.trials] == ["COMPLETE", "COMPLETE", "RUNNING"]
    first_x = before.trials[0].params["x"]

    # Resume as the CLI does: open (sweeps dead workers), reseed the sampler from the study's size.
    study = open_study(storage, "s", "fp", resume=True, sampler=make_sampler("random", 7),
                       pruner=make_pruner("none", 1), shown_url=url)
    study.sampler = make_sampler("random", sampler_seed(7, 0, len(study.trials)))
    trials = study.trials
    assert trials[2].state.name == "FAIL" and "died" in trials[2].user_attrs["error"]
    assert trials[3].state.name == "WAITING" and trials[3].params == {"x": killed_x}  # the retry
    # the retry does not inherit the failure's error nor the dead worker's name
    assert not {"error", "worker", "worker_start"} & set(trials[3].user_attrs)
    assert n_finished(study) == 2  # the retried failure does not use up the budget

    ran = run_study(study, recording_errors(_objective), n_trials=5, timeout=None)
    trials = study.trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 5 and ran == 3  # nothing lost: the retry plus two new trials
    assert trials[3].state.name == "COMPLETE" and trials[3].params["x"] == killed_x
    assert "error" not in trials[3].user_attrs and trials[3].system_attrs["retry_history"] == [2]
    assert trials[3].user_attrs["worker"].endswith(f":{os.getpid()}")  # the worker that ran the retry
    new_x = [t.params["x"] for t in trials[4:]]
    assert first_x not in new_x and trials[1].params["x"] not in new_x  # the sampler did not restart
    # Reseeding with the old seed would have repeated trial 0 (the defect this guards against).
    fresh = optuna.create_study(sampler=make_sampler("random", 7))
    assert fresh.ask().suggest_float("x", 0.0, 1.0) == first_x


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_interrupted_trial_is_retried_and_not_counted(tmp_path, kind) -> None:
    """Ctrl-C (KeyboardInterrupt) in trial 2: Optuna records it FAIL; run_study marks it
    interrupted and enqueues its parameters, so it does not count toward the budget and the
    resumed study runs it first, then only the trials still missing."""
    url = f"sqlite:///{tmp_path}/s.db" if kind == "sqlite" else f"journal://{tmp_path}/s.log"
    kw = dict(sampler=make_sampler("random", 3), pruner=make_pruner("none", 1), shown_url=url)
    seen: dict[int, float] = {}

    def objective(trial):
        x = trial.suggest_float("x", 0.0, 1.0)
        seen[trial.number] = x
        if trial.number == 2 and len(seen) == 3:
            raise KeyboardInterrupt
        return x

    study = open_study(open_storage(url), "s", "fp", resume=False, **kw)
    with pytest.raises(KeyboardInterrupt):
        run_study(study, recording_errors(objective), n_trials=5, timeout=None)
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "WAITING"]
    assert trials[2].user_attrs["error"].startswith("interrupted")
    assert trials[3].params == {"x": seen[2]} and trials[3].system_attrs["retry_history"] == [2]
    assert n_finished(study) == 2  # the cut trial is not a finished one

    again = open_study(open_storage(url), "s", "fp", resume=True, **kw)
    lines: list[str] = []
    assert run_study(again, recording_errors(objective), n_trials=5, timeout=None, log=lines.append) == 3
    trials = again.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL"] + ["COMPLETE"] * 3
    assert trials[3].value == seen[2]  # the retry ran first, on the cut trial's parameters
    assert n_finished(again) == 5
    # the completed retry is not flagged with the cut trial's error (trials.parquet's attr.error,
    # the log line); its link to the failed trial stays
    assert trials[2].user_attrs["error"].startswith("interrupted")
    assert "error" not in trials[3].user_attrs and trials[3].system_attrs["retry_history"] == [2]
    assert lines[0] == f"trial 3: COMPLETE validation fitness {seen[2]:.4f}", lines
    from evomerge.pipelines.tune.results import trials_table

    assert trials_table(again).column("attr.error").to_pylist() == [None, None, trials[2].user_attrs["error"], None, None, None]


def test_a_trial_finished_before_the_interrupt_is_not_retried(tmp_path) -> None:
    """An interrupt that lands between trials (here: in a callback after trial 0 completed)
    leaves nothing to retry."""
    from evomerge.pipelines.tune.study import retry_interrupted

    url = f"sqlite:///{tmp_path}/s.db"
    study = open_study(open_storage(url), "s", "fp", resume=False, sampler=make_sampler("random", 3),
                       pruner=make_pruner("none", 1), shown_url=url)
    study.optimize(_objective, n_trials=1)
    assert retry_interrupted(study, study.trials[0]._trial_id) is False
    assert [t.state.name for t in study.get_trials(deepcopy=False)] == ["COMPLETE"]


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_an_interrupt_while_optuna_records_the_end_still_retries_the_trial(tmp_path, kind, monkeypatch) -> None:
    """Ctrl-C landing in Optuna's own write of trial 2's end (seen under load: the trial stayed
    RUNNING): run_study fails it as interrupted and enqueues its parameters, as for a cut objective."""
    url = f"sqlite:///{tmp_path}/s.db" if kind == "sqlite" else f"journal://{tmp_path}/s.log"
    study = open_study(open_storage(url), "s", "fp", resume=False, sampler=make_sampler("random", 3),
                       pruner=make_pruner("none", 1), shown_url=url)
    storage, write = study._storage, study._storage.set_trial_state_values
    cut: list[int] = []

    def interrupted_once(trial_id, state, values=None):
        if storage.get_trial(trial_id).number == 2 and not cut:
            cut.append(trial_id)
            raise KeyboardInterrupt
        return write(trial_id, state, values)

    monkeypatch.setattr(storage, "set_trial_state_values", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        run_study(study, recording_errors(_objective), n_trials=5, timeout=None)
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "WAITING"]
    assert trials[2].user_attrs["error"].startswith("interrupted")
    assert trials[3].params == trials[2].params and trials[3].system_attrs["retry_history"] == [2]
    assert n_finished(study) == 2


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_signal_while_optuna_creates_the_trial_leaves_none_running(tmp_path, kind, monkeypatch) -> None:
    """SIGINT arriving while Optuna creates trial 2 (its row exists, ``ask`` has not returned;
    seen under load: the trial stayed RUNNING, with no parameters, and no worker could name it).
    Under the CLI's handler it is raised once the trial is known, which is then failed as
    interrupted and enqueued again, as a cut objective's."""
    from evomerge.interrupts import stop_on_signals

    url = f"sqlite:///{tmp_path}/s.db" if kind == "sqlite" else f"journal://{tmp_path}/s.log"
    study = open_study(open_storage(url), "s", "fp", resume=False, sampler=make_sampler("random", 3),
                       pruner=make_pruner("none", 1), shown_url=url)
    storage, create = study._storage, study._storage.create_new_trial

    def signalled_inside(study_id, template_trial=None):
        trial_id = create(study_id, template_trial)
        if storage.get_trial(trial_id).number == 2:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)  # the handler runs in here: raised here, the trial's id would be lost
        return trial_id

    monkeypatch.setattr(storage, "create_new_trial", signalled_inside)
    with pytest.raises(KeyboardInterrupt):
        with stop_on_signals():
            run_study(study, recording_errors(_objective), n_trials=5, timeout=None)
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "WAITING"]
    assert trials[2].user_attrs["error"].startswith("interrupted") and trials[2].params == {}
    assert trials[3].system_attrs["retry_history"] == [2]
    assert "ask" not in vars(study)  # run_study's wrapper is gone with its loop
