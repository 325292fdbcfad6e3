"""``python jobs/NAME.py --help`` prints the job's own usage (``python jobs/NAME.py``, its own
flags, then the command's) and exits 0, before anything else (``--out`` resolution, Ray).

Before the fix ``jobs/tune.py --help`` printed ``evomerge tune``'s help labelled ``Usage: tune``
(no ``--workers``, ``--out [default: runs/tune]``), then a traceback ending in
``typer.exceptions.Exit: 0``, exit code 1; the other jobs said ``error: no --out and
$EVOMERGE_RUNS_DIR is not set`` (exit code 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def job_help(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("EVOMERGE_RUNS_DIR", "RAY_JOB_CONFIG_JSON_ENV_VAR")}
    env["COLUMNS"] = "200"  # one line per option
    return subprocess.run([sys.executable, f"jobs/{script}", *args], cwd=ROOT, env=env, text=True, capture_output=True,
                          timeout=120)


@pytest.mark.parametrize("script,flag", [("tune.py", "--n-trials"), ("evolve.py", "--algo"), ("scale.py", "--preset"),
                                         ("scaling.py", "--actors")])
def test_job_help_is_the_jobs_own_usage(script, flag) -> None:
    res = job_help(script, "--help")
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stderr == "", res.stderr[-2000:]
    assert f"Usage: python jobs/{script} [OPTIONS]" in res.stdout
    assert flag in res.stdout and "--out" in res.stdout  # the command's options
    assert "runs/tune" not in res.stdout and "EVOMERGE_RUNS_DIR" in res.stdout  # --out as the job reads it


def test_tune_job_help_lists_its_own_flags_not_the_ones_it_sets() -> None:
    res = job_help("tune.py", "--config", "missing.yaml", "--help")  # --help wins over the rest
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert any("--workers" in ln and "default 2" in ln for ln in lines), res.stdout
    assert any("--cpus-per-worker" in ln for ln in lines), res.stdout
    assert not any("--worker " in ln for ln in lines), "set by the job for each worker"


def test_help_after_a_double_dash_is_not_a_help_request() -> None:
    sys.path.insert(0, str(ROOT / "jobs"))
    import _common

    assert _common.wants_help(["--small", "--help"])
    assert not _common.wants_help(["--small", "--", "--help"])
