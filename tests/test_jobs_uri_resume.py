"""Jobs whose ``--out`` is an object-store URI, interrupted or killed, then resumed with the
command they print: real job programs, real Ray, the small zoo. The URI is ``fake://NAME``, a
real pyarrow file system over a local folder (tests/test_jobs_uri_publish.py, ``FAKE_STORE``),
which the job program sees as any non-``file://`` store: it writes to its scratch folder and
copies the run there.

Before the fix the URI stayed empty unless the command succeeded, so the printed resume command
failed (``error: --resume: nothing at fake://... to continue``)."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

psutil = pytest.importorskip("psutil")

from _signal_helpers import alive, check_stopped, interrupt  # noqa: E402
from test_jobs_uri_publish import FAKE_STORE, stored  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # each about 40-50 s (two jobs, two Ray starts)
ROOT = Path(__file__).resolve().parents[1]

EVOLVE = {"evaluation": {"max_samples": 8, "batch_size": 8, "tasks": ["rev_digits", "sort_digits"]},
          "genome": {"population": 3, "generations": 40, "early_stop_iter": 1000, "space": "ab"}}
TUNE = {"seed": 0, "merge": {"method": "task_arithmetic", "params": {"lambda": 1.0}},
        "evaluation": {"max_samples": 8, "batch_size": 8},
        "tune": {"space": {"merge.params.lambda": {"low": 0.2, "high": 1.2}}, "sampler": "random"}}


def job(store: Path, scratch: Path, script: str, *args: str, interval: float = 0.0) -> subprocess.Popen:
    """``python jobs/SCRIPT ARGS`` with ``fake://`` backed by ``store``, in a new session."""
    env = {**os.environ, "EVOMERGE_JOB_SCRATCH": str(scratch), "EVOMERGE_JOB_PUBLISH_INTERVAL_S": str(interval)}
    env.pop("RAY_JOB_CONFIG_JSON_ENV_VAR", None)
    return subprocess.Popen([sys.executable, "-c", FAKE_STORE, str(store), script, *map(str, args)], cwd=ROOT,
                            env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def run_line(store: Path, scratch: Path, line: str, interval: float = 0.0) -> subprocess.CompletedProcess:
    """Run a printed ``python jobs/NAME.py ...`` command line as it is (with the fake store)."""
    words = shlex.split(line)
    assert words[0] == "python" and words[1].startswith("jobs/"), line
    proc = job(store, scratch, *words[1:], interval=interval)
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def scratch_runs(scratch: Path) -> list[Path]:
    return sorted((scratch / "evomerge-jobs").glob("*/run"))


def loadable_checkpoint(store: Path, name: str, tmp: Path) -> int:
    """The step of the checkpoint the URI's ``checkpoints/LATEST`` names, loaded from a copy."""
    from evomerge.pipelines.evolve import records

    back = tmp / f"fetched-{time.monotonic_ns()}"
    for rel, data in stored(store, name).items():
        (back / rel).parent.mkdir(parents=True, exist_ok=True)
        (back / rel).write_bytes(data)
    step, weights, state = records.load_checkpoint(back)
    assert weights
    return step


def rounds(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"^round (\d+) ", text, flags=re.M)]


def test_interrupted_evolve_job_leaves_its_run_at_the_uri_and_its_resume_command_finishes_it(tmp_path, small_zoo):
    """SIGINT after the first checkpoint, no periodic copies: the run is copied at the stop; the
    printed resume command fetches it and goes on from its checkpoint (the rounds before it are
    not run again, their history files stay as they were)."""
    store, scratch = tmp_path / "store", tmp_path / "scratch"
    cfg = tmp_path / "evolve.yaml"
    cfg.write_text(yaml.safe_dump(EVOLVE))
    args = ["--algo", "genome", "--small", "--config", cfg, "--actors", "1", "--out", "fake://runs/evo1"]
    proc = job(store, scratch, "jobs/evolve.py", *args)
    seen, seconds, out, err = interrupt(
        proc, signal.SIGINT, lambda seen: any((r / "checkpoints" / "LATEST").is_file() for r in scratch_runs(scratch)))
    [local] = scratch_runs(scratch)
    line = check_stopped(proc, seen, seconds, err, 130, local)
    resume = shlex.join(["python", "jobs/evolve.py", *map(str, args), "--resume"])
    # the job prints the URI where the CLI names its scratch folder (removed after a success)
    assert line == f"interrupted: evomerge evolve (the finished rounds stay in fake://runs/evo1); resume with: {resume}"
    assert "evomerge job results: fake://runs/evo1" in out
    at_stop = stored(store, "runs/evo1")
    assert "run.json" in at_stop and not [f for f in at_stop if ".tmp-" in f]
    step = loadable_checkpoint(store, "runs/evo1", tmp_path)
    history = {f: data for f, data in at_stop.items() if f.startswith("history/")}
    assert f"history/step_{step:06d}.parquet" in history

    res = run_line(store, scratch, line.split("resume with: ", 1)[1])
    assert res.returncode == 0, res.stderr[-3000:]
    assert rounds(res.stderr + res.stdout)[0] == step + 1, "it went on from the checkpoint"
    assert "evomerge job results: fake://runs/evo1" in res.stdout
    done = stored(store, "runs/evo1")
    assert "result.json" in done and "best_adapter/adapter_config.json" in done
    for f, data in history.items():
        if int(re.sub(r"\D", "", f)) <= step:
            assert done[f] == data, f"{f} was written again"
    assert loadable_checkpoint(store, "runs/evo1", tmp_path) == rounds(res.stderr + res.stdout)[-1], \
        "the URI holds the last round's checkpoint"
    assert scratch_runs(scratch) == [], "a finished run's scratch folder is removed"


def test_killed_evolve_job_resumes_from_what_the_periodic_copies_put_at_the_uri(tmp_path, small_zoo):
    """SIGKILL (no cleanup, no copy at the end: a node lost, or `ray job stop` past its 3 s)
    once a periodic copy holds a checkpoint: the URI holds a whole one; the resume goes on from
    it and keeps the scratch folder the killed job left (it may hold more) aside."""
    store, scratch = tmp_path / "store", tmp_path / "scratch"
    cfg = tmp_path / "evolve.yaml"
    cfg.write_text(yaml.safe_dump(EVOLVE))
    args = ["--algo", "genome", "--small", "--config", cfg, "--actors", "1", "--out", "fake://evo2"]
    proc = job(store, scratch, "jobs/evolve.py", *args, interval=0.3)
    latest = store / "evo2" / "checkpoints" / "LATEST"
    seen, _, _, _ = interrupt(proc, signal.SIGKILL, lambda seen: latest.is_file())
    alive(seen)  # end the Ray the killed driver left
    assert proc.returncode == -signal.SIGKILL
    step = loadable_checkpoint(store, "evo2", tmp_path)
    assert not [f for f in stored(store, "evo2") if ".tmp-" in f]
    res = run_line(store, scratch, shlex.join(["python", "jobs/evolve.py", *map(str, args), "--resume"]), 0.3)
    assert res.returncode == 0, res.stderr[-3000:]
    assert rounds(res.stderr + res.stdout)[0] >= step + 1
    assert re.search(r"was not wholly copied there \(the job was killed\?\); kept in \S+not-copied-", res.stdout)
    assert "result.json" in stored(store, "evo2")


def _complete(db: Path) -> int:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as con:
            return con.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_terminated_tune_job_leaves_its_study_at_the_uri_and_its_resume_command_finishes_it(tmp_path, small_zoo):
    """Two workers on the SQLite study in the run folder, copied every 0.5 s while they write it
    (SQLite's backup: the job's own connection is open too); SIGTERM after two trials: the URI's
    study holds them, is whole, and the printed resume command completes the study. No worker's
    folder is left, locally or at the URI."""
    store, scratch = tmp_path / "store", tmp_path / "scratch"
    cfg = tmp_path / "tune.yaml"
    cfg.write_text(yaml.safe_dump(TUNE))
    args = ["--workers", "2", "--config", cfg, "--small", "--n-trials", "8", "--out", "fake://tune1"]
    proc = job(store, scratch, "jobs/tune.py", *args, interval=0.5)
    two_done = lambda seen: any(_complete(r / "optuna.db") >= 2 for r in scratch_runs(scratch))  # noqa: E731
    seen, seconds, out, err = interrupt(proc, signal.SIGTERM, two_done, poll=0.3)
    [local] = scratch_runs(scratch)
    line = check_stopped(proc, seen, seconds, err, 143, local)
    resume = shlex.join(["python", "jobs/tune.py", *map(str, args), "--resume"])
    assert line == f"interrupted: tune job (what it finished is in fake://tune1); resume with: {resume}"
    assert not list(local.glob("worker-*")), "the workers' folders are gone"
    db = store / "tune1" / "optuna.db"
    assert sorted(stored(store, "tune1")) == ["optuna.db"]
    with contextlib.closing(sqlite3.connect(f"file:{db}?immutable=1", uri=True)) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert _complete(db) >= 2

    res = run_line(store, scratch, line.split("resume with: ", 1)[1])
    assert res.returncode == 0, res.stderr[-3000:]
    files = stored(store, "tune1")
    assert {"optuna.db", "summary.json", "trials.parquet", "best_config.yaml"} <= set(files)
    assert not [f for f in files if f.startswith("worker-")]
    assert _complete(db) >= 8
