"""Helper of the CLI tests: run an ``evomerge`` command in-process and capture what it printed."""

from __future__ import annotations

from evomerge.cli import main


def run_cli(args, capsys) -> tuple[int, str, str]:
    """``evomerge ARGS`` in this process (each arg passed through ``str``, so paths may be given):
    ``(exit code, stdout, stderr)``. Output printed before the call (fixtures) is dropped first."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def one_error(args, capsys) -> str:
    """``evomerge ARGS`` refused as bad input: exit 2, exactly one ``error: ...`` line on stderr,
    no traceback anywhere; that line."""
    code, out, err = run_cli(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out + err, err
    return lines[0]
