"""``evomerge evolve`` refuses an unusable ``--out`` before Ray starts (docs/search.md: "Refused
before any work"): a tune run folder with ``--resume``, a folder that is not an evolve run, a
``--algo swarm --resume`` over a GENOME run. The folders are real: a GENOME run and a tune run
made by the CLI once per module (subprocesses, so this process never starts Ray itself)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import yaml

from evomerge.cli import main

pytestmark = pytest.mark.ray  # the fixture's GENOME run starts Ray (in its own process)

EVOLVE = {"evaluation": {"max_samples": 8, "batch_size": 8, "tasks": ["rev_digits", "sort_digits"]},
          "genome": {"population": 3, "generations": 1, "space": "ab"}}
TUNE = {"seed": 0, "merge": {"method": "task_arithmetic", "params": {"lambda": 1.0}},
        "evaluation": {"max_samples": 8, "batch_size": 8},
        "tune": {"space": {"merge.params.lambda": {"low": 0.2, "high": 1.2}}, "sampler": "random"}}
RAY_STARTED = "Started a local Ray instance"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_zoo):
    """A finished GENOME run and a finished tune run (one trial), made side by side."""
    root = tmp_path_factory.mktemp("runs")
    (root / "evolve.yaml").write_text(yaml.safe_dump(EVOLVE))
    (root / "tune.yaml").write_text(yaml.safe_dump(TUNE))
    cli = [sys.executable, "-m", "evomerge"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs = [
        subprocess.Popen([*cli, "evolve", "--algo", "genome", "--small", "--config", str(root / "evolve.yaml"),
                          "--out", str(root / "genome"), "--actors", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env),
        subprocess.Popen([*cli, "tune", "--small", "--config", str(root / "tune.yaml"), "--out", str(root / "tune"),
                          "--n-trials", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env),
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    assert (root / "genome" / "run.json").is_file() and (root / "tune" / "optuna.db").is_file()
    other = root / "notes"
    other.mkdir()
    (other / "readme.txt").write_text("not a run")
    return root


def _snapshot(folder):
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.mark.parametrize(
    "case, words",
    [
        ("tune --resume", ["--resume:", "holds no evolve run to continue (no run.json)"]),
        ("tune", ["exists and is not an evomerge evolve run directory"]),
        ("notes", ["exists and is not an evomerge evolve run directory"]),
        ("swarm over genome --resume", ["cannot resume: `algo` differs", "'genome' there, 'swarm' now"]),
    ],
)
def test_unusable_out_is_refused_before_ray_starts(runs, capfd, case, words):
    """Exit 2 and one ``error:`` line, in well under Ray's start-up time, Ray never started in
    this process (no "Started a local Ray instance" line, not initialised), the folder untouched."""
    import ray

    folder = {"tune --resume": "tune", "tune": "tune", "notes": "notes", "swarm over genome --resume": "genome"}[case]
    out = runs / folder
    algo = "swarm" if case.startswith("swarm") else "genome"
    args = ["evolve", "--algo", algo, "--small", "--config", str(runs / "evolve.yaml"), "--out", str(out), "--actors", "1"]
    if case.endswith("--resume"):
        args.append("--resume")
    before = _snapshot(out)
    capfd.readouterr()
    t0 = time.monotonic()
    rc = main(args)
    seconds = time.monotonic() - t0
    cap = capfd.readouterr()
    err = cap.out + cap.err
    assert rc == 2, err
    assert RAY_STARTED not in err, err
    assert not ray.is_initialized()
    lines = [ln for ln in cap.err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], lines[0]
    assert seconds < 5.0, (seconds, err)  # Ray's start alone takes 2.5-5.5 s here
    assert _snapshot(out) == before
