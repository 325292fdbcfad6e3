"""A worker killed between creating a trial (Optuna's ``ask``) and recording itself on it leaves a
RUNNING trial that names no worker; the sweep fails and retries it once no live worker could
still be about to claim it."""

from __future__ import annotations

import optuna

from evomerge.pipelines.tune import study as study_mod
from evomerge.pipelines.tune.study import WORKER_ATTR, sweep_dead_trials


def _study(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s")


def test_unclaimed_running_trial_is_failed_and_retried_only_once_old(tmp_path, monkeypatch):
    study = _study(tmp_path)
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # created, never claimed
    assert sweep_dead_trials(study) == []  # young: its worker may be about to record itself
    assert study.trials[trial.number].state == optuna.trial.TrialState.RUNNING
    monkeypatch.setattr(study_mod, "UNCLAIMED_AFTER_S", -1.0)  # now "old"
    assert sweep_dead_trials(study) == [trial.number]
    states = [t.state for t in study.trials]
    assert states[trial.number] == optuna.trial.TrialState.FAIL
    retry = [t for t in study.trials if trial.number in t.system_attrs.get("retry_history", [])]
    assert len(retry) == 1 and retry[0].state == optuna.trial.TrialState.WAITING
    assert retry[0].params == study.trials[trial.number].params


def test_claimed_trial_of_a_live_worker_is_left_alone(tmp_path, monkeypatch):
    import os
    import socket

    study = _study(tmp_path)
    trial = study.ask()
    trial.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")  # this process: alive
    monkeypatch.setattr(study_mod, "UNCLAIMED_AFTER_S", -1.0)
    assert sweep_dead_trials(study) == []
    assert study.trials[trial.number].state == optuna.trial.TrialState.RUNNING
