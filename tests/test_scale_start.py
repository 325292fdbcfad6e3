"""The scale run's start: ``evomerge scale`` starts the pool analysis's child before its own
imports (prewarmed), and the run hands it the arguments; the analysis it writes is the same as
one run in this process. An unused child is ended; bad input still fails before any work."""

from __future__ import annotations

import contextlib
import json

import pytest

from evomerge.pipelines.scale import start


@pytest.fixture(autouse=True)
def _no_child_left():
    yield
    start.discard_prewarmed()


def test_prewarmed_child_runs_the_analysis_as_this_process_does(small_zoo, tmp_path):
    from evomerge.config import config_from_dict
    from evomerge.pipelines.scale.driver import pool_spec

    cfg = config_from_dict({"scale": {"hist_samples": 200}}, "test")
    spec = pool_spec(cfg, small_zoo)
    start.run_analysis(spec, cfg, tmp_path / "here")

    start.prewarm_analysis()
    warm = start._prewarmed
    assert warm.proc.poll() is None  # importing, then waiting for its arguments
    with contextlib.ExitStack() as stack:
        job = start.start_analysis(stack, spec, cfg, tmp_path / "child")
        assert job is warm and start._prewarmed is None  # the prewarmed child got the work
        job.result()
    assert warm.proc.returncode == 0

    here, child = tmp_path / "here", tmp_path / "child"
    assert json.loads((child / "summary.json").read_text()) == json.loads((here / "summary.json").read_text())
    tables = sorted(p.name for p in here.glob("*.parquet"))
    assert tables and tables == sorted(p.name for p in child.glob("*.parquet"))
    for name in tables:  # (bytes: a table's NaN is not equal to itself)
        assert (child / name).read_bytes() == (here / name).read_bytes(), name


def test_without_a_prewarmed_child_a_fresh_one_runs_it(tmp_path):
    """No prewarm (``run_scale`` called as a library): a child is started as before; a
    prewarmed child that died while warming is replaced by a fresh one, whose error shows."""
    from evomerge.errors import EvomergeError

    start.prewarm_analysis()
    dead = start._prewarmed
    dead.proc.kill()
    dead.proc.wait()
    with contextlib.ExitStack() as stack:
        job = start.start_analysis(stack, "not a spec", None, tmp_path / "a")
        assert job is not dead
        with pytest.raises(EvomergeError, match="run_analysis \\(in a child process\\) failed"):
            job.result()


def test_unused_prewarmed_child_is_ended():
    start.prewarm_analysis()
    proc = start._prewarmed.proc
    start.prewarm_analysis()  # one at a time
    assert start._prewarmed.proc is proc
    start.discard_prewarmed()
    assert start._prewarmed is None and proc.poll() is not None


def test_bad_input_fails_before_work_and_leaves_no_child(tmp_path, capsys):
    from evomerge.cli import main

    out = tmp_path / "run"
    rc = main(["scale", "--small", "--out", str(out), "--set", "scale.delta=-1", "--no-progress"])
    assert rc == 2
    assert "scale.delta" in capsys.readouterr().err
    assert start._prewarmed is None
    assert not out.exists()
