"""A second ``scale`` or ``evolve`` into a run folder that another process is writing is refused
at once (:func:`evomerge.io.run_lock`), before Ray starts and without touching the folder: both
commands write their run piece by piece (cells, rounds), so two writers used to mix their files.
The other process is real and holds the real lock."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import yaml

from _cli_helpers import run_cli
from evomerge.io import output_lock_path, sha256_tree

RAY_STARTED = "Started a local Ray instance"

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from evomerge.io import run_lock
    run, command, held, release = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
    with run_lock(run, command):
        held.write_text("held")
        while not release.exists():
            time.sleep(0.02)
""")


class Holder:
    """Another process holding ``run_lock(run, command)`` until :meth:`release`."""

    def __init__(self, run: Path, command: str, tmp_path: Path) -> None:
        self.held, self.go = tmp_path / f"held-{command}", tmp_path / f"go-{command}"
        self.held.unlink(missing_ok=True)
        self.go.unlink(missing_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run), command, str(self.held), str(self.go)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.monotonic()
        while not self.held.exists():
            assert self.proc.poll() is None, self.proc.communicate()
            assert time.monotonic() - t0 < 60, "the holder never took the lock"
            time.sleep(0.02)

    def release(self) -> None:
        self.go.write_text("go")
        assert self.proc.wait(timeout=60) == 0, self.proc.communicate()


def _config(tmp_path: Path) -> Path:
    """A small run on the built-in small zoo (``--small``): one cheap method, one seed."""
    data = {"evaluation": {"max_samples": 8, "batch_size": 64},  # scale scores all 200 test rows a task
            "genome": {"population": 2, "generations": 1},
            "scale": {"methods": ["task_arithmetic"], "search": [], "seeds": [0], "with_rht": False,
                      "pairs": False, "k_max": 4, "law_first_k": 3},
            "ray": {"num_actors": 1}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _refused_busy(args, run: Path, command: str, capsys) -> None:
    import ray

    code, out, err = run_cli(args, capsys)
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code != 0 and len(lines) == 1 and "Traceback" not in out + err, err[-3000:]
    assert lines[0] == (f"error: {run}: another `evomerge {command}` is writing this run now "
                        f"(it holds {output_lock_path(run)}); wait for it to end, or use another --out")
    assert RAY_STARTED not in out + err and not ray.is_initialized()


def _check(command: str, run: Path, args: list, resume_args: list, finished: str, tmp_path, capsys) -> None:
    """While another process holds the lock, ``args`` is refused and writes nothing; once it is
    free the run goes ahead (leaving no lock file); held again, ``resume_args`` is refused and the
    finished run's files stay as they were."""
    holder = Holder(run, command, tmp_path)
    try:
        _refused_busy(args, run, command, capsys)
        assert not run.exists()
    finally:
        holder.release()

    code, out, err = run_cli(args, capsys)
    assert code == 0, err[-3000:]
    assert (run / finished).is_file() and not output_lock_path(run).exists()

    before = sha256_tree(run)
    holder = Holder(run, command, tmp_path)
    try:
        _refused_busy(resume_args, run, command, capsys)
    finally:
        holder.release()
    assert sha256_tree(run) == before


def test_scale_into_a_folder_being_written_is_refused_and_resume_leaves_it_alone(small_zoo, tmp_path, capsys):
    cfg, run = _config(tmp_path), tmp_path / "run"
    args = ["scale", "--small", "--no-progress", "--config", cfg, "--out", run]
    _check("scale", run, args, ["scale", "--no-progress", "--out", run, "--resume"], "report.md", tmp_path, capsys)


def test_evolve_into_a_folder_being_written_is_refused(small_zoo, tmp_path, capsys):
    cfg, run = _config(tmp_path), tmp_path / "evolve"
    args = ["evolve", "--small", "--algo", "genome", "--config", cfg, "--out", run]
    _check("evolve", run, args, [*args, "--resume"], "run.json", tmp_path, capsys)
