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


def test_histogram_samples_are_the_rows_the_histograms_show(tmp_path):
    """The side process reads only each method's largest-k sample files; the rows are those of
    the whole table at each method's largest k with samples, in the same order (a search whose
    larger k was cut has no file there; a pair cell has none at all)."""
    import numpy as np

    from evomerge.pipelines.scale.plan import Cell
    from evomerge.pipelines.scale.report import load_plan, load_samples
    from evomerge.pipelines.scale.report_figures import histogram_samples
    from evomerge.pipelines.scale.store import CellStore

    cells = [Cell("merge", k, m, rht, s, (s,), tuple(range(k))) for m in ("ties", "task_arithmetic") for k in (1, 2, 3)
             for rht in (False, True) for s in (0, 1)]
    cells += [Cell("search", k, "genome", True, 0, (0,), tuple(range(k))) for k in (2, 3, 4)]  # k = 4 cut: no file
    cells += [Cell("pair", 2, "ties", False, 0, (0,), (0, 5))]
    plan = {"cells": [{"kind": c.kind, "k": c.k, "method": c.method, "rht": c.rht, "seed": c.seed,
                       "seeds": list(c.seeds), "experts": list(c.experts)} for c in cells]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    store, rng = CellStore(tmp_path), np.random.default_rng(0)
    for c in cells:
        if (c.kind, c.k) in (("search", 4),):
            continue
        sample = [] if c.kind == "pair" else [
            {"cell": c.id, "k": c.k, "method": c.method, "rht": r, "seed": c.seed, "value": float(v)}
            for r in ((False, True) if c.kind == "search" else (c.rht,)) for v in rng.normal(size=5)]
        store.write(c.id, [], sample)
    store.write("k009-ties-plain-s0", [], [{"cell": "k009-ties-plain-s0", "k": 9, "method": "ties", "rht": False,
                                             "seed": 0, "value": 1.0}])  # an older plan's cell: not shown

    full = load_samples(tmp_path, load_plan(tmp_path))
    expected = full[full.groupby("method")["k"].transform("max") == full["k"]].reset_index(drop=True)
    got = histogram_samples(tmp_path).reset_index(drop=True)
    assert sorted(set(zip(got["method"], got["k"]))) == [("genome", 3), ("task_arithmetic", 3), ("ties", 3)]
    assert len(got) == 5 * (8 + 2) and got.equals(expected)


def test_scale_run_as_the_program_skips_teardown_only_when_asked(tmp_path):
    """``main()`` run as the program exits at once (output flushed, atexit handlers skipped) after
    a command that set ``FAST_EXIT``; called with ``argv`` (tests, library use) it returns."""
    import subprocess
    import sys

    script = (
        "import atexit, sys\n"
        "from evomerge.cli import _common, app, main\n"
        "@app.command('probe')\n"
        "def probe(fast: bool = False):\n"
        "    print('done')\n"
        "    _common.FAST_EXIT = fast\n"
        "atexit.register(lambda: print('teardown ran'))\n"
        "if sys.argv[1:] == ['in-process']:\n"
        "    print('returned', main(['probe', '--fast']))\n"
        "else:\n"
        "    sys.argv = ['evomerge', 'probe'] + sys.argv[1:]\n"
        "    sys.exit(main())\n"
    )
    def run(*args):
        return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120)

    fast, slow, inproc = run("--fast"), run(), run("in-process")
    assert (fast.returncode, fast.stdout) == (0, "done\n"), fast.stderr
    assert (slow.returncode, slow.stdout) == (0, "done\nteardown ran\n"), slow.stderr
    assert (inproc.returncode, inproc.stdout) == (0, "done\nreturned 0\nteardown ran\n"), inproc.stderr

