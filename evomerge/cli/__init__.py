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
    try:
        app(args=argv, standalone_mode=False)
    except EvomergeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 1
    except SystemExit as e:  # click usage errors
        return int(e.code or 0)
    except Exception as err:  # click.ClickException and friends
        import click

        if isinstance(err, click.ClickException):
            err.show()
            return err.exit_code
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
