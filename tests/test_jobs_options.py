"""The job programs refuse option values out of range before any work: one ``error:`` line
naming the option, exit code 2, nothing started, nothing written. ``jobs/tune.py``'s own options
(``--workers``, ``--cpus-per-worker``) and the ``evomerge tune`` options it reads before its
workers start; the other jobs pass their options to the CLI, which refuses them the same way.

Before the fix ``--workers 0`` created the study, ran no trial and exited 0;
``--cpus-per-worker -2`` ended in Ray's traceback (exit 1) and both left ``optuna.db``;
``--n-trials 0`` ended in click's traceback and ``--timeout -1`` left ``optuna.db``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

TUNE = {"seed": 0, "merge": {"method": "task_arithmetic", "params": {"lambda": 1.0}},
        "evaluation": {"max_samples": 8, "batch_size": 8},
        "tune": {"space": {"merge.params.lambda": {"low": 0.2, "high": 1.2}}, "sampler": "random"}}


def run_job(script: str, *args, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    environ = {**os.environ, **(env or {})}
    environ.pop("RAY_JOB_CONFIG_JSON_ENV_VAR", None)
    return subprocess.run([sys.executable, f"jobs/{script}", *map(str, args)], cwd=ROOT, env=environ, text=True,
                          capture_output=True, timeout=timeout)


@pytest.fixture
def tune_cfg(tmp_path):
    cfg = tmp_path / "tune.yaml"
    cfg.write_text(yaml.safe_dump(TUNE))
    return cfg


@pytest.mark.parametrize("args,message", [
    (["--workers", "0"], "error: --workers '0': expected a whole number of study workers, at least 1"),
    (["--workers", "-1"], "error: --workers '-1': expected a whole number of study workers, at least 1"),
    (["--workers", "1.5"], "error: --workers '1.5': expected a whole number of study workers, at least 1"),
    (["--workers=two"], "error: --workers 'two': expected a whole number of study workers, at least 1"),
    (["--cpus-per-worker", "-2"], "error: --cpus-per-worker '-2': expected a number of CPUs above 0"),
    (["--cpus-per-worker", "0"], "error: --cpus-per-worker '0': expected a number of CPUs above 0"),
    (["--cpus-per-worker", "nan"], "error: --cpus-per-worker 'nan': expected a number of CPUs above 0"),
    (["--cpus-per-worker", "inf"], "error: --cpus-per-worker 'inf': expected a number of CPUs above 0"),
    (["--cpus-per-worker", "many"], "error: --cpus-per-worker 'many': expected a number of CPUs above 0"),
    (["--n-trials", "0"], "error: Invalid value for '--n-trials': Input should be greater than or equal to 1"),
    (["--timeout", "-1"], "error: --timeout: `tune.timeout`: Input should be greater than 0"),
    (["--cpus-per-worker", "4096"], "error: --cpus-per-worker 4096: more than the"),
])
def test_tune_job_refuses_values_out_of_range_before_any_work(tmp_path, tune_cfg, args, message) -> None:
    out = tmp_path / "study"
    t0 = time.monotonic()
    res = run_job("tune.py", "--config", tune_cfg, "--small", *args, "--out", out)
    seconds = time.monotonic() - t0
    errors = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2, res.stderr[-2000:]
    assert len(errors) == 1 and errors[0].startswith(message), res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "Started a local Ray" not in res.stderr + res.stdout
    assert not out.exists(), "nothing written"
    assert seconds < 30, "refused before Ray starts"


def test_a_uri_job_refuses_a_bad_publish_interval_before_any_work(tmp_path) -> None:
    res = run_job("evolve.py", "--algo", "genome", "--small", "--out", "mock:///bucket/run",
                  env={"EVOMERGE_JOB_PUBLISH_INTERVAL_S": "-5", "EVOMERGE_JOB_SCRATCH": str(tmp_path)})
    assert res.returncode == 2
    assert res.stderr.strip() == ("error: $EVOMERGE_JOB_PUBLISH_INTERVAL_S='-5': expected seconds >= 0 "
                                  "(0: copy only when the job ends)")
    assert not (tmp_path / "evomerge-jobs").exists() or not any((tmp_path / "evomerge-jobs").iterdir())


@pytest.mark.parametrize("script,args,message", [
    ("evolve.py", ["--algo", "genome", "--actors", "0"], "error: --actors: `ray.num_actors`: Input should be greater"),
    ("evolve.py", ["--algo", "genome", "--generations", "-3"], "error: --generations: `genome.generations`: Input"),
    ("scaling.py", ["--actors", "0,2"], "error: --actors '0,2': every count must be >= 1"),
])
def test_the_other_jobs_pass_their_numbers_to_the_cli_which_refuses_them(tmp_path, script, args, message) -> None:
    out = tmp_path / "run"
    res = run_job(script, "--small", *args, "--out", out)
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1].startswith(message), res.stderr[-2000:]
    assert not out.exists()
