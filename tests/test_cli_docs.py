"""Every ``evomerge`` command written in README.md and docs/*.md parses with the CLI as it is
(known command, known options, values of the right type), so a renamed flag cannot stay in the
docs. Running them is ``benchmarks/check_doc_commands.py`` (slow: minutes)."""

from __future__ import annotations

import importlib.util
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _checker():
    spec = importlib.util.spec_from_file_location("check_doc_commands", ROOT / "benchmarks" / "check_doc_commands.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


CHECK = _checker()
PAGES = CHECK.pages([ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
COMMANDS = [c for p in PAGES for c in p.commands if "&&" not in c.text and not CHECK.ASSIGNMENT.match(c.text)
            and not c.text.startswith("ray job")]


def test_the_docs_have_commands() -> None:
    names = {c.page for c in COMMANDS}
    assert {"README.md", "docs/merging.md", "docs/scale.md", "docs/zoo.md", "docs/search.md"} <= names
    assert "merge.yaml" in {n for p in PAGES for n in p.files}


@pytest.mark.parametrize("cmd", COMMANDS, ids=[f"{c.page}:{c.line}" for c in COMMANDS])
def test_doc_command_parses(cmd) -> None:
    import typer.main

    from evomerge.cli import app

    words = shlex.split(cmd.text.replace("$Z", "/zoo"), comments=True)
    while words and "=" in words[0] and not words[0].startswith("-"):
        words.pop(0)  # NAME=VALUE environment for the command
    if words[0] != "evomerge":
        pytest.skip("a python command: benchmarks/check_doc_commands.py runs it")  # python -c ... lines only
    group = typer.main.get_command(app)
    cli, args = group, words[1:]
    while hasattr(cli, "commands"):
        assert args and args[0] in cli.commands, f"{cmd.page}:{cmd.line}: unknown command in {cmd.text!r}"
        cli, args = cli.commands[args[0]], args[1:]
    cli.make_context(" ".join(words[:2]), list(args))  # raises on an unknown option or a bad value
