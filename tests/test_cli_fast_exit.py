"""merge, evaluate and analyze, run as the program, end without the interpreter's teardown once
their outputs are written (``_common.FAST_EXIT``), and their outputs are complete; a refused
command still ends the usual way."""

from __future__ import annotations

import subprocess
import sys

import pyarrow.parquet as pq
import pytest

# the program as `evomerge` runs it, with an atexit probe: it prints only if the teardown ran
PROGRAM = (
    "import atexit, sys\n"
    "from evomerge.cli import main\n"
    "atexit.register(lambda: print('teardown ran'))\n"
    "sys.argv = ['evomerge'] + sys.argv[1:]\n"
    "sys.exit(main())\n"
)


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROGRAM, *map(str, args)], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("command", ["merge", "evaluate", "analyze"])
def test_command_skips_the_teardown_after_its_outputs(command, small_zoo, tmp_path) -> None:
    experts = ["-e", small_zoo.expert_dirs["brackets"], "-e", small_zoo.expert_dirs["majority"]]
    out = tmp_path / "out"
    if command == "merge":
        done = _run("merge", *experts, "--method", "ties", "--rank", "4", "-q", "--out", out)
    elif command == "evaluate":
        out = tmp_path / "scores.parquet"
        done = _run("evaluate", "--small", *experts, "--max-samples", "8", "--out", out)
    else:
        done = _run("analyze", *experts, "--base", small_zoo.base_dir, "-q", "--out", out)
    assert done.returncode == 0, done.stderr
    assert "teardown ran" not in done.stdout, done.stdout
    if command == "merge":
        from evomerge.experts.peft_io import load_peft_adapter

        assert "merged model:" in done.stdout and load_peft_adapter(out).modules
    elif command == "evaluate":
        table = pq.read_table(out)
        assert set(table.column("candidate").to_pylist()) == {"base", "brackets", "majority"}
    else:
        assert "results:" in done.stdout and (out / "summary.json").is_file()


def test_a_refused_command_keeps_the_teardown(small_zoo, tmp_path) -> None:
    done = _run("merge", "-e", small_zoo.expert_dirs["brackets"], "--method", "nope", "--out", tmp_path / "o")
    assert done.returncode == 2 and "unknown merge method" in done.stderr
    assert done.stdout.endswith("teardown ran\n"), done.stdout
