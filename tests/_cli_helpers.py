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
