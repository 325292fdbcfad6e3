"""The ``evomerge`` command line: a thin face over the library.

Each subcommand lives in its own module with a ``register(app)`` function; modules import
their heavy dependencies inside the command body so ``evomerge --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

import typer

from evomerge.errors import EvomergeError

app = typer.Typer(
    name="evomerge",
    help="Merge many fine-tuned experts into one model, and find out how many are worth merging.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_SUBCOMMAND_MODULES = ["merge", "zoo", "evaluate", "analyze", "evolve", "scale", "report", "tune"]


def _register_all() -> None:
    for name in _SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(f"evomerge.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"evomerge.cli.{name}":
                continue  # subcommand not built yet
            raise
        module.register(app)


_register_all()


def main(argv: list[str] | None = None) -> int:
    """Run one command; every failure a user can cause ends as ``error: ...`` lines on stderr.

    Exit codes: 0 success; 2 bad input (usage errors, :class:`EvomergeError`, output that cannot
    be written); 1 other operating-system errors; 130 interrupted (SIGINT, Ctrl-C), 143
    terminated (SIGTERM), each with one line on stderr saying what stopped and how to resume it
    (a command's own line, :func:`_common.interruptible`, else :func:`_interrupted_line`). Click's
    exceptions are recognised by their interface, not their class, because typer may bundle its
    own copy of click (typer 0.29 does), whose exceptions are not ``click.ClickException``.
    """
    from evomerge import interrupts
    from evomerge.cli import _common

    _common.FAST_EXIT = False
    _common.ARGV = list(sys.argv[1:] if argv is None else argv)
    # every command: SIGTERM, too, unwinds the command (its Ray session, its temporary outputs)
    with interrupts.stop_on_signals() as fired:
        return _main(argv, fired)


def _main(argv: list[str] | None, fired: list[int]) -> int:
    from evomerge import interrupts
    from evomerge.cli import _common

    try:
        try:
            rv = app(args=argv, prog_name="evomerge", standalone_mode=False)
        except (Exception, KeyboardInterrupt) as err:  # outside the command's body (typer turns one
            # inside it into 130), or a library's error for it (interrupts.caused_by_stop)
            if not interrupts.caused_by_stop(err):  # (Interrupted, a BaseException, passes by)
                raise
            rv = 130
        if rv == 130:  # a command without a line of its own: typer swallowed the KeyboardInterrupt
            raise _common.Interrupted(_interrupted_line(), interrupts.exit_code(KeyboardInterrupt(), fired))
        if argv is None and _common.FAST_EXIT and rv in (None, 0):
            exit_now()
    except _common.Interrupted as err:  # the command has cleaned up
        if argv is None:  # the program: whatever still runs below it is the run's (a cleanup cut short)
            from evomerge.pipelines.scale.interrupt import descendants, end_survivors

            end_survivors(descendants())
        print(_common.interrupted_line(err.message), file=sys.stderr)
        if argv is None and _common.FAST_EXIT:
            exit_now(err.code)
        return err.code
    except EvomergeError as err:
        _print_error(str(err))
        return 2
    except OSError as err:
        from evomerge.errors import os_error_message

        _print_error(os_error_message(err))
        return 1
    except SystemExit as err:
        return err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
    except Exception as err:
        code = _click_error(err)
        if code is None:
            raise
        return code
    return rv if isinstance(rv, int) else 0


def _interrupted_line() -> str:
    """The line of a command interrupted that has no resume of its own: its outputs are written
    atomically (all or nothing), so running it again is the way on."""
    from evomerge.cli import _common

    words = []
    for arg in _common.ARGV:
        if arg.startswith("-"):
            break
        words.append(arg)
    return f"interrupted: evomerge {' '.join(words[:2])} stopped before it finished; nothing to resume (run it again)"


def exit_now(code: int = 0) -> None:
    """End the program at once, skipping the interpreter's teardown (about 1 s with torch and
    Ray loaded): for a command whose outputs are all written and closed, whose child processes
    have all exited and that has stopped the Ray it started (it asked with
    ``_common.FAST_EXIT``; only when run as the program, ``main()`` without ``argv``), or a
    cluster job that has cleaned up after an interrupt (``jobs/_common.exit_job``)."""
    import logging
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _print_error(message: str) -> None:
    from evomerge.pipelines.tune.storage import shown_url  # no secret of a storage URL reaches the terminal

    for line in shown_url(str(message)).splitlines() or [""]:
        print(f"error: {line}", file=sys.stderr)


def _click_error(err: BaseException) -> int | None:
    """Show a click (or typer-bundled click) exception; its exit code, or None if it is not one."""
    name = type(err).__name__
    code = getattr(err, "exit_code", None)
    if name == "Abort":
        _print_error("aborted")
        return 1
    if not isinstance(code, int):
        return None
    if name == "Exit":
        return code
    fmt = getattr(err, "format_message", None)
    if not callable(fmt):
        return None
    ctx = getattr(err, "ctx", None)
    if name == "NoArgsIsHelpError" and ctx is not None:  # a bare group: show its help
        print(ctx.get_help(), file=sys.stderr)
        return code
    path = ctx.command_path if ctx is not None else _command_path()  # click raises some without one
    where = f"{path}: " if path else ""
    hint = f" (see `{path} --help`)" if path and code == 2 else ""
    _print_error(f"{where}{' '.join(str(fmt()).split())}{hint}")
    return code


def _command_path() -> str:
    """``evomerge COMMAND [SUBCOMMAND]`` of the command line being run, for a usage error click
    raises without its context (an option given without its value: ``--out`` last)."""
    import typer.main

    from evomerge.cli import _common

    command, words = typer.main.get_command(app), ["evomerge"]
    for arg in _common.ARGV:
        sub = getattr(command, "commands", None)
        if not sub or arg not in sub:
            break
        command = sub[arg]
        words.append(arg)
    return " ".join(words)


if __name__ == "__main__":
    sys.exit(main())
