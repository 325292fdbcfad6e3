"""What a job prints names what exists when it ends.

Before the fix a ``jobs/tune.py`` worker printed ``results in OUT/worker-0 ...`` and ``best config:
OUT/worker-0/best_config.yaml`` (and, interrupted, ``resume with: ... --out OUT/worker-1``), folders
the job removes; a job at a URI printed the CLI's ``history:`` / ``best adapter:`` lines inside its
scratch folder, removed after a success. The tune job's own lines: tests/test_jobs_tune_outputs.py."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "jobs"))
sys.path.insert(0, str(ROOT / "tests"))

import _common  # noqa: E402
from test_jobs_uri_publish import store  # noqa: E402,F401 - the fake object store fixture


def printing(*lines: str, rc: int = 0):
    """A command that writes ``history.parquet`` and prints ``lines`` (``{out}``: its --out)."""

    def runner(command, args):
        out = Path(args[args.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        (out / "history.parquet").write_text("x")
        for line in lines:
            print(line.format(out=out), flush=True)
        return rc

    return runner


def test_a_uri_jobs_lines_name_the_uri_not_its_scratch_folder(store, capsys) -> None:  # noqa: F811
    rc = _common.run("evolve", ["--algo", "genome", "--out", "fake://runs/e1"], runner=printing(
        "history: {out}/history.parquet", "best adapter: {out}/best_adapter", "study in sqlite:///{out}/optuna.db"))
    out = capsys.readouterr().out
    assert rc == 0
    assert "history: fake://runs/e1/history.parquet" in out
    assert "best adapter: fake://runs/e1/best_adapter" in out
    assert re.search(r"study in sqlite:///\S+/run/optuna.db", out), "a path inside a URL is left alone"
    assert out.strip().splitlines()[-1] == "evomerge job results: fake://runs/e1"
    assert (store / "runs" / "e1" / "history.parquet").is_file()


def test_the_rewrite_ends_with_the_command(store, capsys) -> None:  # noqa: F811
    before = sys.stdout
    _common.run("evolve", ["--out", "fake://e3"], runner=printing("history: {out}/history.parquet", rc=1))
    assert sys.stdout is before
    err = capsys.readouterr().err
    assert "error" not in err


def test_the_rewrite_names_the_folder_not_a_longer_name(capsys) -> None:
    """``LOCAL2`` or ``LOCAL.lock`` are other files: only the folder itself (and what is in it) is
    printed as the URI; a path inside a ``sqlite:///`` URL stays."""
    local = "/tmp/evomerge-jobs/evolve-ab/run"
    with _common.printed_as(local, "s3://b/run"):
        print(f"history: {local}/history.parquet")
        print(f"in `{local}`, beside {local}2/x and {local}.lock")
        print(f"study in sqlite:///{local}/optuna.db")
    out = capsys.readouterr().out.splitlines()
    assert out == ["history: s3://b/run/history.parquet",
                   f"in `s3://b/run`, beside {local}2/x and {local}.lock",
                   f"study in sqlite:///{local}/optuna.db"]
