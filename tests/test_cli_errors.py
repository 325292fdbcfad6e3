"""One error path for the whole CLI: every usage error, on every command, is one ``error:`` line
and exit 2 (whatever copy of click typer bundles), never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from _cli_helpers import run_cli
from evomerge.cli import app


def _commands() -> list[list[str]]:
    """Every command path the app registers (sub-apps such as `zoo` included)."""
    import typer.main

    out = []
    group = typer.main.get_command(app)
    for name, cmd in group.commands.items():
        sub = getattr(cmd, "commands", None)
        if sub:
            out.extend([name, s] for s in sub)
        else:
            out.append([name])
    return out


COMMANDS = _commands()


def test_every_command_is_covered() -> None:
    names = {" ".join(c) for c in COMMANDS}
    for expected in ("merge", "methods", "evaluate", "analyze", "evolve", "scale", "report", "tune", "zoo build"):
        assert expected in names


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_unknown_option_is_one_line_and_exit_2(path, capsys) -> None:
    code, out, err = run_cli([*path, "--bogus-flag"], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: evomerge {' '.join(path)}: "), err
    assert "--bogus-flag" in lines[0] and "Traceback" not in err + out


def _value_option(path) -> str | None:
    """An option of the command at ``path`` that takes a value (None if it has none)."""
    import typer.main

    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return next((o for p in command.params if getattr(p, "opts", None) and not getattr(p, "is_flag", True)
                 and p.param_type_name == "option" for o in p.opts if o.startswith("--")), None)


VALUED = [(c, _value_option(c)) for c in COMMANDS if _value_option(c)]


@pytest.mark.parametrize("path, option", VALUED, ids=[" ".join(c) for c, _ in VALUED])
def test_option_without_its_value_names_the_command(path, option, capsys) -> None:
    """Click raises this one without its context: the line still names the command, as every usage error does."""
    code, out, err = run_cli([*path, option], capsys)
    assert code == 2, err
    assert err.strip() == (f"error: evomerge {' '.join(path)}: Option '{option}' requires an argument. "
                           f"(see `evomerge {' '.join(path)} --help`)"), err


@pytest.mark.parametrize("args, words", [
    (["nosuchcommand"], ["No such command", "nosuchcommand"]),
    (["evolve", "--out", "x"], ["Missing option", "--algo"]),
    (["evaluate", "--max-samples", "many"], ["--max-samples", "integer"]),
    (["evaluate", "--max-samples", "0"], ["--max-samples", "greater than or equal to 1"]),
    (["report"], ["Missing argument"]),
    (["tune", "--n-trials", "0", "--config", "c.yaml"], ["--n-trials"]),
    (["merge", "--set", "novalue"], ["--set 'novalue'", "dotted.key=value"]),
])
def test_usage_errors(args, words, capsys) -> None:
    code, _, err = run_cli(args, capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    for w in words:
        assert w in err, err


def test_help_and_bare_group_exit_codes(capsys) -> None:
    assert run_cli(["--help"], capsys)[0] == 0
    assert run_cli(["merge", "--help"], capsys)[0] == 0
    code, out, err = run_cli([], capsys)  # no command: the help, as click does, exit 2
    assert code == 2 and "Usage" in out + err and "Traceback" not in out + err


def test_console_script_subprocess_has_no_traceback(tmp_path) -> None:
    res = subprocess.run([sys.executable, "-m", "evomerge", "merge", "--bogus-flag"], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.startswith("error: evomerge merge: No such option: --bogus-flag")
    assert "Traceback" not in res.stderr


def test_unreadable_config_is_one_line(tmp_path, capsys) -> None:
    config = tmp_path / "unreadable.yaml"
    config.write_text("seed: 1\n")
    config.chmod(0)
    import os

    if os.access(config, os.R_OK):  # root reads anything: use a path whose parent is a file instead
        config = tmp_path / "unreadable.yaml" / "x.yaml"
    code, _, err = run_cli(["analyze", "--config", str(config), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()
