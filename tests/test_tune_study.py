"""Real Optuna studies on the small built-in zoo: better than the default config, outputs,
two processes sharing one SQLite study, resume after a killed worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import sqlalchemy
import pyarrow.parquet as pq
import pytest
import yaml

from evomerge.config import config_from_dict, load_config

optuna.logging.set_verbosity(optuna.logging.ERROR)

# Merge a subset of the small zoo with TIES / task arithmetic; the default config (task arithmetic
# of all six experts at lambda 1) over-adds and is beaten by a tuned lambda/density/count.
SPACE = {
    "merge.method": {"type": "categorical", "choices": ["ties", "task_arithmetic"]},
    "merge.params.lambda": {"low": 0.2, "high": 1.2},
    "merge.params.density": {"low": 0.2, "high": 1.0},
    "experts.count": {"type": "int", "low": 2},
}


def study_config(n_trials: int, **tune) -> dict:
    return {
        "seed": 0,
        "merge": {"method": "task_arithmetic", "params": {"lambda": 1.0}},
        "evaluation": {"max_samples": 32},
        "tune": {"space": SPACE, "n_trials": n_trials, "sampler": "tpe", **tune},
    }


@pytest.fixture(scope="module")
def small_zoo():
    from evomerge.zoo import ensure_zoo

    return ensure_zoo("small")


def test_study_beats_the_default_config_and_writes_its_outputs(small_zoo, tmp_path) -> None:
    from evomerge.pipelines.tune.objective import MergeScorer
    from evomerge.pipelines.tune.run import TUNE_FILES, _pool_spec, run_tune

    cfg = config_from_dict(study_config(8))
    res = run_tune(cfg, tmp_path / "run", small=True, log=lambda m: None)
    assert res.states.get("COMPLETE") == 8
    assert res.default_fitness is not None and res.best_value > res.default_fitness

    table = pq.read_table(tmp_path / "run" / "trials.parquet").to_pylist()
    assert [r["number"] for r in table] == list(range(8))
    assert all(r["state"] == "COMPLETE" and 0.0 <= r["value"] <= 1.0 for r in table)
    assert all(isinstance(r["attr.test_fitness"], float) for r in table)  # recorded, never optimised
    assert max(r["value"] for r in table) == pytest.approx(res.best_value)
    for png in ("optimization_history.png", "param_importances.png"):
        assert (tmp_path / "run" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["storage"].startswith("sqlite:///") and "optuna-dashboard" in summary["dashboard"]
    # everything the writers put in --out is a name TUNE_FILES knows (check_out_dir accepts the folder)
    written = {p.name for p in (tmp_path / "run").iterdir()} | {Path(f).name for f in summary["files"].values()}
    assert written <= TUNE_FILES and {"summary.json", "optuna.db", "param_importances.png"} <= written

    # The best config is a ready config: it loads, and re-scoring it reproduces the best trial.
    best = load_config(tmp_path / "run" / "best_config.yaml")
    k = res.best_params["experts.count"]
    assert len(best.experts.experts) == k and best.experts.base == small_zoo.base_dir
    assert best.merge.method == res.best_params["merge.method"]
    rescored = MergeScorer(cfg, _pool_spec(cfg, small=True)).score(best, k)
    assert rescored.validation == pytest.approx(res.best_value, abs=1e-9)


def _tune_cmd(config: Path, out: Path, storage: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "evomerge", "tune", "--config", str(config), "--out", str(out),
            "--storage", storage, "--small", *extra]


@pytest.mark.slow
def test_two_processes_share_one_sqlite_study(small_zoo, tmp_path) -> None:
    config = tmp_path / "tune.yaml"
    config.write_text(yaml.safe_dump(study_config(8, sampler="random")))
    storage = f"sqlite:///{tmp_path}/shared.db"
    procs = [
        subprocess.Popen(_tune_cmd(config, tmp_path / f"w{i}", storage, "--resume", "--worker", str(i)),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    study = optuna.load_study(study_name="evomerge", storage=storage)
    finished = [t for t in study.trials if t.state.is_finished()]
    # The budget is the study's: 8 trials in all (one more at most when both start the last one at once).
    assert 8 <= len(finished) <= 9
    assert sorted(t.number for t in study.trials) == list(range(len(study.trials)))
    workers = {t.user_attrs["worker"] for t in finished}
    assert len(workers) == 2, "both processes ran trials"
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in finished)


@pytest.mark.slow
def test_resume_after_the_worker_is_killed(small_zoo, tmp_path) -> None:
    config = tmp_path / "tune.yaml"
    config.write_text(yaml.safe_dump(study_config(6, sampler="random")))
    storage = f"sqlite:///{tmp_path}/study.db"
    proc = subprocess.Popen(_tune_cmd(config, tmp_path / "run", storage), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.time()
    done: list = []
    while time.time() - t0 < 400:
        if proc.poll() is not None:
            pytest.fail("the study finished before it could be interrupted")
        try:
            study = optuna.load_study(study_name="evomerge", storage=storage)
            done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        except KeyError:  # not created yet
            done = []
        except sqlalchemy.exc.SQLAlchemyError:  # the worker is creating the storage's tables right now
            done = []
        if len(done) >= 2:
            break
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {t.number: t.params for t in done}

    # Without --resume the existing study is refused (before any trial runs) ...
    refused = subprocess.run(_tune_cmd(config, tmp_path / "run", storage), capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    # ... with --resume the missing trials run and the earlier ones are kept.
    resumed = subprocess.run(_tune_cmd(config, tmp_path / "run", storage, "--resume"), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    study = optuna.load_study(study_name="evomerge", storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 6
    assert all(study.trials[n].params == p for n, p in before.items())
    # The trial killed mid-run is FAIL and was retried with its parameters; the resumed sampler did
    # not restart (no new trial repeats trial 0's parameters).
    retried = {n for t in study.trials for n in t.system_attrs.get("retry_history", [])}
    assert {t.number for t in study.trials if t.state == optuna.trial.TrialState.FAIL} <= retried
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    new = [t for t in study.trials if t.number > max(before) and "retry_history" not in t.system_attrs]
    assert new and all(t.params != study.trials[0].params for t in new)
    assert len(pq.read_table(tmp_path / "run" / "trials.parquet")) == len(study.trials)


def test_changed_space_is_refused_before_trials_start(small_zoo, tmp_path) -> None:
    from evomerge.errors import ConfigError
    from evomerge.pipelines.tune.run import run_tune

    storage = f"sqlite:///{tmp_path}/s.db"
    run_tune(config_from_dict(study_config(1)), tmp_path / "a", storage=storage, small=True, log=lambda m: None)
    other = study_config(2)
    other["tune"]["space"] = {**SPACE, "merge.params.lambda": {"low": 0.1, "high": 2.0}}
    with pytest.raises(ConfigError, match="different search space"):
        run_tune(config_from_dict(other), tmp_path / "b", storage=storage, resume=True, small=True, log=lambda m: None)
    study = optuna.load_study(study_name="evomerge", storage=storage)
    assert len(study.trials) == 1


def test_cmaes_sampler_runs_a_study(small_zoo, tmp_path) -> None:
    from evomerge.pipelines.tune.run import run_tune

    data = study_config(6, sampler="cmaes")
    # CMA-ES needs a numeric space (categorical dimensions fall back to independent sampling)
    data["merge"] = {"method": "ties"}
    data["tune"]["space"] = {"merge.params.lambda": {"low": 0.2, "high": 1.2},
                             "merge.params.density": {"low": 0.2, "high": 1.0}}
    res = run_tune(config_from_dict(data), tmp_path / "run", small=True, log=lambda m: None)
    assert res.states == {"COMPLETE": 6}
    study = optuna.load_study(study_name="evomerge", storage=f"sqlite:///{tmp_path}/run/optuna.db")
    by_cma = [t.number for t in study.trials if any(k.startswith("cma:") for k in t.system_attrs)]
    assert by_cma and min(by_cma) >= 3, "after 3 start-up trials, CMA-ES samples"
