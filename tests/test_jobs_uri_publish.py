"""A job whose ``--out`` is an object-store URI (jobs/_common.py, jobs/_mirror.py): the run is
copied there while it runs and however it ends (success, failure, interrupt), only what changed,
in the order it was written, each file atomically; ``--resume`` fetches it back; a new run does
not write over a URI holding one; a scratch folder that was not wholly copied is kept.

The URI is ``fake://NAME``: a real ``pyarrow.fs`` file system (fsspec's ``DirFileSystem`` over a
local folder, through pyarrow's ``FSSpecHandler``), put where ``evomerge.storage_uri.resolve``
answers for URIs (pyarrow has no registry a Python file system could join). It is not the local
file system (``file://`` is used in place), so nothing is shared with the run folder. No Ray here.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "jobs"))

import _common  # noqa: E402
import _mirror  # noqa: E402

# the same, for a job run as a program: ``python -c FAKE_STORE STORE_ROOT jobs/NAME.py ARGS``
FAKE_STORE = """
import runpy, sys
from pathlib import Path
root, script, *args = sys.argv[1:]
sys.path.insert(0, {tests!r})
from test_jobs_uri_publish import install_fake_store
install_fake_store(root)
sys.argv = [script, *args]
sys.path.insert(0, str(Path(script).resolve().parent))
runpy.run_path(script, run_name="__main__")
""".format(tests=str(Path(__file__).resolve().parent))


class CountingHandler:
    """Operations that make a file appear or vanish at the store (``put``: a file written under
    its final name, or renamed to it; ``delete``), and an optional failure after ``fail_after``
    of them."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self.fail_after: int | None = None

    def note(self, op: str, path: str) -> None:
        if self.fail_after is not None and len(self.log) >= self.fail_after:
            raise OSError(f"injected: the store went away before {op} {path}")
        self.log.append((op, path))


def fake_fs(root: str | os.PathLike, counter: CountingHandler | None = None):
    import pyarrow.fs as pafs
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.local import LocalFileSystem

    class Handler(pafs.FSSpecHandler):
        def move(self, src, dest):
            if counter is not None:
                counter.note("put", dest)
            return super().move(src, dest)

        def delete_file(self, path):
            if counter is not None and ".tmp-" not in path:
                counter.note("delete", path)
            return super().delete_file(path)

    Path(root).mkdir(parents=True, exist_ok=True)
    return pafs.PyFileSystem(Handler(DirFileSystem(path=str(root), fs=LocalFileSystem())))


def install_fake_store(root: str | os.PathLike, counter: CountingHandler | None = None, monkeypatch=None) -> None:
    """``fake://PATH`` opens as PATH inside the folder ``root``."""
    import evomerge.storage_uri as su

    original = su.resolve

    def resolve(location):
        loc = str(location)
        if loc.startswith("fake://"):
            return fake_fs(root, counter), loc[len("fake://"):].strip("/")
        return original(location)

    if monkeypatch is not None:
        monkeypatch.setattr(su, "resolve", resolve)
    else:
        su.resolve = resolve


def stored(store: Path, name: str) -> dict[str, bytes]:
    base = store / name
    return {p.relative_to(base).as_posix(): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


def save_round(run: Path, step: int) -> None:
    """What ``evomerge evolve`` writes after a round: its history file, then its checkpoint
    (weights + state, an atomic folder), then ``checkpoints/LATEST``; the newest two are kept."""
    import pyarrow as pa

    from evomerge.pipelines.evolve import records

    records.write_history_step(run, step, pa.table({"step": [step], "fitness": [0.1 * step]}))
    weights = {f"g{step}.{i}": {"w": np.full(64, step + i, np.float32)} for i in range(3)}
    records.save_checkpoint(run, step, weights, {"step": step, "population": sorted(weights)})


@pytest.fixture
def store(tmp_path, monkeypatch):
    root = tmp_path / "store"
    install_fake_store(root, monkeypatch=monkeypatch)
    monkeypatch.setenv(_common.SCRATCH_ENV, str(tmp_path / "scratch"))
    monkeypatch.setenv(_common.PUBLISH_INTERVAL_ENV, "0")
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    return root


# ---------------------------------------------------------------- the copy itself
def test_a_copy_cut_anywhere_leaves_a_run_the_resume_can_read(tmp_path) -> None:
    """Rounds 0-1 copied; then rounds 2-3 (which remove checkpoints 0 and 1): cut the second copy
    after every possible number of operations: each time the store holds a checkpoint LATEST
    names, whole (the checkpoint of round 1 or 3), and no file under a temporary name."""
    from evomerge.pipelines.evolve import records

    counter = CountingHandler()
    run = tmp_path / "run"
    for step in (0, 1):
        save_round(run, step)
    first = _mirror.Mirror(run, "x", tmp_path / "work")
    first.fs, first.root, first.whole = fake_fs(tmp_path / "full", counter), "r", False
    assert first.publish()
    for step in (2, 3):
        save_round(run, step)
    counter.log.clear()
    first.publish()
    total = len(counter.log)
    ops = [op for op, _ in counter.log]
    assert ops.count("delete") == 4, "checkpoints 0 and 1 (two files each) went away"
    latest = next(i for i, (op, path) in enumerate(counter.log) if path.endswith("checkpoints/LATEST"))
    assert latest == ops.index("delete") - 1, "LATEST goes up after the checkpoint it names, before any removal"
    seen_steps = set()
    for cut in range(total + 1):
        again = tmp_path / f"cut{cut}"
        local = tmp_path / f"local{cut}"
        import shutil

        shutil.rmtree(local, ignore_errors=True)
        for step in (0, 1):
            save_round(local, step)
        m = _mirror.Mirror(local, "x", tmp_path / f"work{cut}")
        m.fs, m.root, m.whole = fake_fs(again), "r", False
        assert m.publish()
        for step in (2, 3):
            save_round(local, step)
        faulty = CountingHandler()
        faulty.fail_after = cut
        m.fs = fake_fs(again, faulty)
        if cut < total:
            with pytest.raises(OSError, match="injected"):
                m.publish()
        else:
            assert m.publish()
        files = stored(again, "r")
        assert not [f for f in files if ".tmp-" in f], f"cut {cut}: a temporary name is visible"
        back = tmp_path / f"back{cut}"
        fetcher = _mirror.Mirror(back, "x", tmp_path / f"w{cut}")
        fetcher.fs, fetcher.root = fake_fs(again), "r"
        fetcher.fetch(fetcher.remote_files())
        step, weights, state = records.load_checkpoint(back)
        assert state["step"] == step and sorted(weights) == state["population"]
        assert weights[f"g{step}.0"]["w"][0] == step
        seen_steps.add(step)
    assert seen_steps == {1, 3}


def test_only_what_changed_goes_up_and_what_the_run_removed_goes_away(tmp_path) -> None:
    counter = CountingHandler()
    run = tmp_path / "run"
    (run / "sub").mkdir(parents=True)
    (run / "a.txt").write_text("a")
    (run / "sub" / "b.txt").write_text("b")
    (run / ".a.txt.tmp-123-xyz").write_text("half")  # a writer's temporary: never copied
    (run / "worker-0").mkdir()
    (run / "worker-0" / "w.txt").write_text("private")
    m = _mirror.Mirror(run, "x", tmp_path / "work", skip=lambda rel: rel.startswith("worker-"))
    m.fs, m.root, m.whole = fake_fs(tmp_path / "s", counter), "r", False
    assert m.publish()
    assert stored(tmp_path / "s", "r") == {"a.txt": b"a", "sub/b.txt": b"b"}
    counter.log.clear()
    assert m.publish() and counter.log == [], "nothing changed, nothing copied"
    (run / "a.txt").write_text("a2")
    (run / "sub" / "b.txt").unlink()
    (run / "sub").rmdir()
    assert m.publish()
    assert [op for op, _ in counter.log] == ["put", "delete"]
    assert stored(tmp_path / "s", "r") == {"a.txt": b"a2"}
    assert not (tmp_path / "s" / "r" / "sub").exists(), "no empty folder left on a file system store"


def test_a_live_sqlite_database_is_copied_whole(tmp_path) -> None:
    """Optuna's ``optuna.db`` (WAL mode) while another process commits to it and this process
    holds a connection (the job's own, as jobs/tune.py's): each copy is a database holding every
    row committed before it, and the live database loses nothing."""
    run = tmp_path / "run"
    run.mkdir()
    db = run / "optuna.db"
    with sqlite3.connect(db) as con:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE t (i INTEGER)")
    mine = sqlite3.connect(db, timeout=30)  # held open across the copies
    mine.execute("SELECT count(*) FROM t").fetchone()
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time\n"
        f"con = sqlite3.connect({str(db)!r}, timeout=30)\n"
        "for i in range(300):\n"
        "    con.execute('INSERT INTO t VALUES (?)', (i,)); con.commit(); time.sleep(0.002)\n"
        "print('done', flush=True)\n")], stdout=subprocess.PIPE, text=True)
    m = _mirror.Mirror(run, "x", tmp_path / "work", databases=("optuna.db",))
    m.fs, m.root, m.whole = fake_fs(tmp_path / "s"), "r", False
    counts = []
    try:
        while writer.poll() is None:
            assert m.publish()
            copy = tmp_path / "s" / "r" / "optuna.db"
            with contextlib.closing(sqlite3.connect(f"file:{copy}?immutable=1", uri=True)) as c:  # leaves no file
                assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
                counts.append(c.execute("SELECT count(*) FROM t").fetchone()[0])
            time.sleep(0.05)
    finally:
        writer.wait(timeout=60)
    assert writer.stdout.read().strip() == "done"
    assert counts == sorted(counts), "each copy holds at least what the one before held"
    assert mine.execute("SELECT count(*) FROM t").fetchone()[0] == 300, "the live database lost nothing"
    assert mine.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    mine.close()
    assert m.publish()
    assert sorted(stored(tmp_path / "s", "r")) == ["optuna.db"], "no -wal / -shm copied"
    with contextlib.closing(sqlite3.connect(tmp_path / "s" / "r" / "optuna.db")) as c:
        assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 300


# ---------------------------------------------------------------- the job around it (jobs/_common.run)
def writer(files: dict[str, str], rc: int = 0, interrupt: bool = False, seen: list | None = None):
    """A command that writes ``files`` into its --out, then returns ``rc`` or is interrupted."""

    def runner(command, args):
        out = Path(args[args.index("--out") + 1])
        if seen is not None:
            seen.append(sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
                        if out.is_dir() else [])
        for rel, text in files.items():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_text(text)
        if interrupt:
            raise KeyboardInterrupt
        return rc

    return runner


def test_a_failed_job_leaves_its_run_at_the_uri_and_resume_fetches_it(store, capsys) -> None:
    rc = _common.run("evolve", ["--algo", "genome", "--out", "fake://runs/e1"],
                     runner=writer({"run.json": "{}", "checkpoints/LATEST": "step_000000\n"}, rc=1))
    assert rc == 1
    assert stored(store, "runs/e1") == {"run.json": b"{}", "checkpoints/LATEST": b"step_000000\n"}
    assert "evomerge job results: fake://runs/e1" in capsys.readouterr().out
    seen: list = []
    rc = _common.run("evolve", ["--algo", "genome", "--out", "fake://runs/e1", "--resume"],
                     runner=writer({"result.json": "{}"}, seen=seen))
    assert rc == 0
    assert seen == [["checkpoints/LATEST", "run.json"]], "the command found the run in its --out"
    assert sorted(stored(store, "runs/e1")) == ["checkpoints/LATEST", "result.json", "run.json"]
    scratch = Path(os.environ[_common.SCRATCH_ENV]) / "evomerge-jobs"
    assert [p.name for p in scratch.iterdir()] == [], "a finished run's scratch folder is removed"


def test_an_interrupted_job_says_where_its_run_is_and_the_resume_finds_it(store, capsys) -> None:
    runner = writer({"optuna.db": "x"}, interrupt=True)
    rc = _common.run("tune", ["--config", "c.yaml", "--out", "fake://t1"], runner=runner, job_argv=["--workers", "2",
                     "--config", "c.yaml", "--out", "fake://t1"])
    assert rc == 130
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == ("interrupted: tune job (what it finished is in fake://t1); resume with: python jobs/tune.py "
                    "--workers 2 --config c.yaml --out fake://t1 --resume")
    assert stored(store, "t1") == {"optuna.db": b"x"}
    seen: list = []
    assert _common.run("tune", ["--config", "c.yaml", "--out", "fake://t1", "--resume"],
                       runner=writer({}, seen=seen)) == 0
    assert seen == [["optuna.db"]]


def test_a_new_run_does_not_write_over_a_uri_holding_one(store, capsys) -> None:
    (store / "e2").mkdir(parents=True)
    (store / "e2" / "run.json").write_text("{}")
    ran: list = []
    rc = _common.run("evolve", ["--out", "fake://e2"], runner=writer({"x": "1"}, seen=ran))
    assert rc == 2 and ran == []
    assert capsys.readouterr().err.strip() == ("error: --out fake://e2 already holds a run (1 file(s), e.g. run.json); "
                                               "pass --resume to continue it, or choose another --out")
    # a command's own --overwrite (evolve-scaling, scale) sees what a local --out would hold
    rc = _common.run("evolve-scaling", ["--out", "fake://e2", "--overwrite"], runner=writer({"x": "1"}, seen=ran))
    assert rc == 0
    assert ran == [["run.json"]] and stored(store, "e2") == {"run.json": b"{}", "x": b"1"}
    assert _common.run("evolve", ["--out", "fake://none", "--resume"], runner=writer({})) == 2
    assert "error: --resume: nothing at fake://none to continue" in capsys.readouterr().err


def test_a_scratch_folder_not_wholly_copied_is_kept(store, capsys) -> None:
    """A job killed (SIGKILL: no copy at the end) leaves a scratch folder the URI may lack: the
    next job for that URI keeps it aside and says where, then resumes from the URI."""
    assert _common.run("evolve", ["--out", "fake://k1"], runner=writer({"run.json": "{}"}, rc=1)) == 1
    scratch = next((Path(os.environ[_common.SCRATCH_ENV]) / "evomerge-jobs").iterdir())
    (scratch / "run" / "newer.txt").write_text("only here")  # as if written after the last copy
    (scratch / _common.DIRTY).touch()  # as a killed job leaves it
    capsys.readouterr()
    assert _common.run("evolve", ["--out", "fake://k1", "--resume"], runner=writer({})) == 0
    kept = [p for p in scratch.iterdir() if p.name.startswith("not-copied-")]
    assert len(kept) == 1 and (kept[0] / "newer.txt").read_text() == "only here"
    assert f"was not wholly copied there (the job was killed?); kept in {kept[0]}" in capsys.readouterr().out
    assert "newer.txt" not in stored(store, "k1")


@pytest.mark.parametrize("value", ["-1", "soon", "nan", "inf"])
def test_a_bad_publish_interval_is_refused_before_any_work(store, monkeypatch, capsys, value) -> None:
    monkeypatch.setenv(_common.PUBLISH_INTERVAL_ENV, value)
    ran: list = []
    assert _common.run("evolve", ["--out", "fake://p1"], runner=writer({}, seen=ran)) == 2
    assert ran == []
    assert capsys.readouterr().err.strip() == (
        f"error: ${_common.PUBLISH_INTERVAL_ENV}={value!r}: expected seconds >= 0 (0: copy only when the job ends)")


def test_the_run_is_copied_while_it_runs(store, monkeypatch) -> None:
    """With an interval, what the command wrote is at the URI before it ends."""
    monkeypatch.setenv(_common.PUBLISH_INTERVAL_ENV, "0.1")
    at_uri: list = []

    def runner(command, args):
        out = Path(args[args.index("--out") + 1])
        out.mkdir(parents=True)
        (out / "run.json").write_text(json.dumps({"round": 1}))
        deadline = time.monotonic() + 10
        while "run.json" not in stored(store, "w1") if (store / "w1").is_dir() else True:
            assert time.monotonic() < deadline, "never copied while running"
            time.sleep(0.05)
        at_uri.append(True)
        return 0

    assert _common.run("evolve", ["--out", "fake://w1"], runner=runner) == 0
    assert at_uri == [True]


def test_two_jobs_on_one_uri_from_one_machine_are_refused(store) -> None:
    """One scratch folder per URI, locked while a job uses it: a second job for the same URI is
    refused (it would write over the first one's copy), one for another URI is not."""
    first = _common.RunLocation("evolve", "fake://same", resume=False)
    try:
        with pytest.raises(_common.JobError, match="another job on this machine is writing this run now"):
            _common.RunLocation("evolve", "fake://same", resume=False)
        other = _common.RunLocation("evolve", "fake://other", resume=False)
        assert other.local != first.local
        other.release()
    finally:
        first.release()
    _common.RunLocation("evolve", "fake://same", resume=False).release()
