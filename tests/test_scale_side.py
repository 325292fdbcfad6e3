"""The scale run's side process (the pool analysis, beside the start): a function runs in a
child interpreter, its value or its error comes back."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from evomerge.errors import EvomergeError
from evomerge.pipelines.scale.side import SideJob


def test_value_comes_back_from_another_process():
    job = SideJob(os.getpid)
    assert job.result() != os.getpid()  # it ran elsewhere
    assert SideJob(json.loads, '{"a": [1, 2.5]}').result() == {"a": [1, 2.5]}


def test_error_comes_back_with_its_traceback():
    job = SideJob(json.loads, "not json")
    with pytest.raises(EvomergeError, match=r"json\.loads \(in a child process\) failed:(.|\n)*JSONDecodeError"):
        job.result()
    job.wait()  # a cleanup path does not raise


def test_unguarded_script_is_not_run_again(tmp_path):
    """A plain script (no ``if __name__ == "__main__"``) that starts a side job: the child does
    not execute the script (multiprocessing's spawn would, and fail)."""
    marker = tmp_path / "runs.txt"
    script = tmp_path / "plain.py"
    script.write_text(
        "import os\n"
        "from evomerge.pipelines.scale.side import SideJob\n"
        f"open({str(marker)!r}, 'a').write('x')\n"
        "print(SideJob(os.getpid).result() != os.getpid())\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True" and marker.read_text() == "x"


def test_warm_job_imports_first_then_runs_when_sent(tmp_path):
    """A warm child has imported the function's module before its arguments come; it runs the
    function once they do, and a cancelled one exits without running it."""
    job = SideJob.warm(json.loads)
    assert job.proc.poll() is None  # waiting for its arguments
    job.send('{"x": 3}')
    assert job.result() == {"x": 3}

    marker = tmp_path / "ran.txt"
    job = SideJob.warm(_write_marker)
    job.cancel()
    assert job.proc.returncode == 0 and not marker.exists()
    with pytest.raises(EvomergeError, match="cancelled before it ran"):
        job.result()
    job.wait()  # a cleanup path does not raise

    job = SideJob.warm(_write_marker)
    job.send(str(marker))
    assert job.result() == "done" and marker.read_text() == "x"


def _write_marker(path: str) -> str:
    with open(path, "a") as fh:
        fh.write("x")
    return "done"


class _WaitsInItsFinalizer:
    """Its finalizer says that it runs (the file ``ready``), then waits there for a signal."""

    def __init__(self, ready: str):
        self.ready = ready

    def __del__(self):
        import time

        open(self.ready, "w").close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the signal's handler raises here, inside the finalizer
            pass


def _signalled_in_a_finalizer(ready: str) -> str:
    import time

    _WaitsInItsFinalizer(ready)  # dropped at once: its finalizer runs now
    time.sleep(30)
    return "the signal was lost"


def test_a_stop_that_lands_in_a_finalizer_still_ends_the_child(tmp_path, capfd):
    """SIGINT (``stop``) raised inside a finalizer of the child's, where Python prints the
    exception ("Exception ignored in ...") and goes on: the child raises it again, so it ends in
    its own cleanup at once (not by SIGKILL after the grace), and prints nothing."""
    import time

    ready = tmp_path / "ready"
    job = SideJob(_signalled_in_a_finalizer, str(ready))
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert time.monotonic() < deadline and job.proc.poll() is None, "the child did not reach its finalizer"
        time.sleep(0.05)
    t0 = time.monotonic()
    job.stop(grace=10.0)
    seconds = time.monotonic() - t0
    err = capfd.readouterr().err
    assert "Exception ignored" not in err and "KeyboardInterrupt" not in err, err
    assert job.proc.returncode == 0 and seconds < 5.0, (job.proc.returncode, seconds)


def test_work_beside_in_a_thread_raises_its_error_on_join():
    """Ray's shutdown runs in a thread beside the report (finish.disconnect_beside): its error
    comes back on join; without a Ray of this run's there is nothing to stop."""
    import threading

    from evomerge.pipelines.scale.finish import Beside, disconnect_beside

    assert disconnect_beside(False) is None
    seen = []
    job = Beside(lambda: seen.append(threading.current_thread().name))
    job.join()
    assert seen == ["ray-shutdown"]  # it ran, in its own thread
    assert Beside(json.loads, "[1, 2]").join() == [1, 2]  # the search phase's skipped cells come back this way
    job = Beside(json.loads, "not json")
    with pytest.raises(json.JSONDecodeError):
        job.join()


def _sample_run(tmp_path):
    """A run directory with a plan and the sample files of its cells (no report inputs): two
    registry merges at k = 1..3 (both variants, two seeds) and a search at k = 2..4 whose k = 4
    the stop rule cut. Returns (cells, the ids the run writes, a writer of one cell)."""
    import numpy as np

    from evomerge.pipelines.scale.plan import Cell
    from evomerge.pipelines.scale.store import CellStore

    cells = [Cell("merge", k, m, rht, s, (s,), tuple(range(k))) for m in ("ties", "task_arithmetic") for k in (1, 2, 3)
             for rht in (False, True) for s in (0, 1)]
    cells += [Cell("search", k, "genome", True, 0, (0,), tuple(range(k))) for k in (2, 3, 4)]
    plan = {"cells": [{"kind": c.kind, "k": c.k, "method": c.method, "rht": c.rht, "seed": c.seed,
                       "seeds": list(c.seeds), "experts": list(c.experts)} for c in cells]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    store, rng = CellStore(tmp_path), np.random.default_rng(0)

    def write(c):
        variants = (False, True) if c.kind == "search" else (c.rht,)
        store.write(c.id, [], [{"cell": c.id, "k": c.k, "method": c.method, "rht": r, "seed": c.seed, "value": float(v)}
                               for r in variants for v in rng.normal(size=50)])

    return cells, {c.id for c in cells if (c.kind, c.k) != ("search", 4)}, write


def test_histograms_drawn_while_cells_run_are_the_end_ones(tmp_path):
    """The side process draws a method's histogram once its cells at the largest k are on disk,
    before the run's last cell; the files are byte for byte those drawn from the finished run;
    a method whose top cells are missing waits for them, or for the driver's word that they will
    not come (the searches' stop skipped them), or for the end."""
    import threading
    import time

    from evomerge.pipelines.scale.report_figures import histogram_samples, weight_histograms
    from evomerge.pipelines.scale.report_side import draw_histograms

    cells, expected, write = _sample_run(tmp_path)
    todo = [c for c in cells if c.id in expected]
    late = [c for c in todo if c.method == "ties" and c.k == 3 and c.seed == 1]
    for c in todo:
        if c not in late:
            write(c)
    closed, out, news = threading.Event(), {}, []
    # at first the driver expects the search at k = 4 too (the stop rule has not cut it yet)
    worker = threading.Thread(target=lambda: out.update(draw_histograms(
        tmp_path, expected | {"k004-genome-s0"}, closed, news=lambda: [news.pop()] if news else [])))
    worker.start()
    figs = tmp_path / "figures"
    deadline = time.time() + 60
    while not (figs / "weight_hist_task_arithmetic.png").is_file():
        assert time.time() < deadline and worker.is_alive()
        time.sleep(0.05)
    time.sleep(0.5)
    assert not (figs / "weight_hist_genome.png").exists()  # k = 4 may still come
    news.append(sorted(expected))  # the searches' stop skipped it
    while not (figs / "weight_hist_genome.png").is_file():
        assert time.time() < deadline and worker.is_alive()
        time.sleep(0.05)
    assert not (figs / "weight_hist_ties.png").exists()  # its k = 3 seed 1 cells are not on disk yet
    for c in late:
        write(c)
    while not (figs / "weight_hist_ties.png").is_file():
        assert time.time() < deadline and worker.is_alive()
        time.sleep(0.05)
    closed.set()  # the run's last cell is on disk
    worker.join(30)
    early = {p.name: p.read_bytes() for p in figs.glob("*.png")}
    at_end = weight_histograms(histogram_samples(tmp_path), tmp_path / "end")
    assert out == at_end  # same names, paths, order
    assert {p.name: p.read_bytes() for p in (tmp_path / "end").glob("*.png")} == early
    assert len(early) == 3


def test_histograms_left_for_the_end_are_drawn_when_told(tmp_path):
    """A method whose expected cells never came (the run says it is done): drawn from what is on
    disk, as the end of the run would."""
    import threading

    from evomerge.pipelines.scale.report_figures import histogram_samples, weight_histograms
    from evomerge.pipelines.scale.report_side import draw_histograms

    cells, expected, write = _sample_run(tmp_path)
    for c in cells:
        if c.id in expected and not (c.method == "genome" and c.k == 3):
            write(c)
    closed = threading.Event()
    closed.set()
    out = draw_histograms(tmp_path, expected | {"k004-genome-s0"}, closed)
    assert out == weight_histograms(histogram_samples(tmp_path), tmp_path / "end")
    assert {p.name: p.read_bytes() for p in (tmp_path / "end").glob("*.png")} == {
        p.name: p.read_bytes() for p in (tmp_path / "figures").glob("*.png")}
    assert "weight_hist_genome" in out  # from k = 2, the largest k with samples on disk


def test_run_files_read_ahead_equal_the_store(tmp_path):
    """RunFiles reads each file once, as it appears; its tables equal CellStore's, including the
    files written after a poll and a subset of cells."""
    from evomerge.pipelines.scale.report_side import RunFiles
    from evomerge.pipelines.scale.store import CellStore, SCORE_SCHEMA
    import pyarrow as pa

    store = CellStore(tmp_path)
    files = RunFiles(tmp_path)
    assert files.scores().equals(store.scores()) and files.scores().num_rows == 0

    def write(cell, value):
        row = {f.name: None for f in SCORE_SCHEMA}
        row.update(cell=cell, kind="merge", k=1, method="ties", task="a", split="test", score=value)
        ex = pa.table({"cell": [cell] * 3, "task": ["a"] * 3, "split": ["test"] * 3, "row": [0, 1, 2],
                       "score": [value, value, value], "cross_entropy": [1.0, 2.0, 3.0], "rht": [False] * 3})
        store.write(cell, [row], [], ex)

    write("k001-b", 0.5)
    write("k001-a-x", 0.25)
    files.poll()
    write("k001-a", 0.75)  # after the poll; "k001-a-x" < "k001-a" as file names, not as ids
    assert files.scores().equals(store.scores())
    assert files.scores()["cell"].to_pylist() == ["k001-a-x", "k001-a", "k001-b"]
    assert files.examples(["k001-b", "k001-a"]).equals(store.examples(["k001-b", "k001-a"]))
    assert files.examples().equals(store.examples())


def test_noise_of_the_two_halves_is_the_noise_of_the_whole():
    """The report on two cores: the side process's validation noise and the driver's test noise,
    merged, are the Noise one noise_tables call gives (table, replicates, keys, rows)."""
    import numpy as np
    import pandas as pd

    from evomerge.pipelines.scale.noise import noise_tables
    from evomerge.pipelines.scale.report import merge_noise
    from evomerge.pipelines.scale.tables import fitness_table

    rng = np.random.default_rng(3)
    tasks, rows, ex = ["a", "b", "c"], [], []
    units = [("base", 0, "base", False)] + [("merge", k, m, r) for m in ("ties", "task_arithmetic")
                                             for k in (1, 2, 3) for r in (False, True)]
    for kind, k, method, rht in units:
        cell = f"k{k:03d}-{method}-{'rht' if rht else 'plain'}-s0"
        for split, n in (("validation", 20), ("test", 30)):
            for task in tasks:
                sc = rng.integers(0, 2, n).astype(float)
                ce = rng.gamma(2.0, 0.5, n)
                ex.append(pd.DataFrame({"cell": cell, "task": task, "split": split, "row": np.arange(n, dtype=np.int32),
                                        "score": sc, "cross_entropy": ce, "rht": rht}))
                rows.append({"cell": cell, "kind": kind, "k": k, "method": method, "rht": rht, "seed": 0,
                             "experts": ",".join(tasks[:k]), "task": task, "in_subset": task in tasks[:k],
                             "split": split, "score": sc.mean(), "seconds": 0.0, "cross_entropy": ce.mean()})
    scores, examples = pd.DataFrame(rows), pd.concat(ex, ignore_index=True)
    fitness = fitness_table(scores)
    whole = noise_tables(scores, examples, fitness, replicates=300)
    halves = [noise_tables(scores[scores["split"] == s], examples[examples["split"] == s], fitness, replicates=300)
              for s in ("validation", "test")]
    merged = merge_noise(halves)
    assert len(whole.table) > 20 and whole.table["low"].notna().all()
    pd.testing.assert_frame_equal(merged.table, whole.table, check_exact=True)
    assert list(merged.reps) == list(whole.reps) == ["test", "validation"]
    for split in whole.reps:
        assert merged.keys[split] == whole.keys[split] and merged.rows[split] == whole.rows[split]
        np.testing.assert_array_equal(merged.reps[split].boot, whole.reps[split].boot)
        np.testing.assert_array_equal(merged.reps[split].value, whole.reps[split].value)
    empty = merge_noise([noise_tables(scores, None, fitness)])
    assert not empty.available and list(empty.table.columns) == list(whole.table.columns)


@pytest.mark.slow
@pytest.mark.ray
def test_sigint_while_the_side_process_draws_stops_everything(tmp_path, small_zoo):
    """Ctrl-C to the driver alone during the last cells, once the report's side process has drawn
    a histogram (it is alive, its input open): exit 130 with the one line, no process left."""
    import signal

    import yaml

    pytest.importorskip("psutil")
    from _signal_helpers import check_stopped, interrupt, start

    cfg = tmp_path / "scale.yaml"
    cfg.write_text(yaml.safe_dump({
        "evaluation": {"max_samples": 8, "batch_size": 8},
        "scale": {"methods": ["task_arithmetic", "ties"], "search": ["genome", "swarm"], "seeds": [0, 1, 2],
                  "with_rht": True, "k_max": 4, "law_first_k": 3, "pairs": False, "order": "given", "hist_samples": 20},
        "genome": {"population": 3, "generations": 2, "early_stop_iter": 1},
        "swarm": {"max_iter": 2, "patience": 1},
        "ray": {"num_actors": 2}}))
    out = tmp_path / "run"
    proc = start("scale", "--small", "--config", str(cfg), "--out", str(out), "--no-progress", "--no-stop")
    drawn = lambda seen: (out / "figures").is_dir() and any((out / "figures").glob("weight_hist_*.png"))  # noqa: E731
    seen, seconds, _, err = interrupt(proc, signal.SIGINT, drawn, timeout=400)
    line = check_stopped(proc, seen, seconds, err, 130, out)
    assert line == f"interrupted; resume with: evomerge scale --out {out} --resume"
    assert not (out / "report.md").exists()
