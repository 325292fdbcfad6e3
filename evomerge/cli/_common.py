"""Options every command shares: ``--set key=value`` (config overrides) and ``--zoo PROFILE|PATH``."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer

from evomerge.errors import ConfigError
from evomerge.interrupts import caused_by_stop, exit_code, stop_on_signals

# set by a command whose run is over (files closed, children and its Ray stopped): `main`, run as
# the program, then exits without the interpreter's teardown
FAST_EXIT = False


class Interrupted(BaseException):
    """A command stopped by SIGINT / SIGTERM after its cleanup: ``main`` prints ``message`` and
    exits with ``code`` (130 / 143). A BaseException, so no ``except Exception`` swallows it, and
    not a KeyboardInterrupt, which typer turns into a silent exit code."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.message, self.code = message, code


# the command line `main` runs (without the program name), for the resume lines
ARGV: list[str] = []

# a caller that runs a command for a program of its own (jobs/*.py) may set this: the resume
# command (``evomerge ... --resume``) of an interrupted command's line is replaced by its result
RESUME_COMMAND: "Callable[[], str] | None" = None


def interrupted_line(message: str) -> str:
    """``message`` (an interrupted command's line) as ``main`` prints it: with the caller's own
    resume command when :data:`RESUME_COMMAND` is set."""
    marker = "resume with: "
    if RESUME_COMMAND is None or marker not in message:
        return message
    return message.split(marker, 1)[0] + marker + RESUME_COMMAND()


@contextlib.contextmanager
def interruptible(message: "Callable[[], str]") -> Iterator[None]:
    """A command's body: on SIGINT / SIGTERM (its own cleanup, ``finally`` blocks and context
    managers such as the Ray session, has run by then) raise :class:`Interrupted` with the line
    ``message()`` builds (what stopped, how to resume), so ``main`` prints it and exits 130 / 143."""
    with stop_on_signals() as fired:
        try:
            yield
        except (Exception, KeyboardInterrupt) as err:  # the interrupt, or a library's error for it
            if not caused_by_stop(err):  # (Interrupted, a BaseException, passes by)
                raise
            raise Interrupted(message(), exit_code(err, fired)) from None


def command_line(*, resume: bool = False) -> str:
    """The command being run, as a shell line (``evomerge ...``); with ``resume`` its ``--resume``
    form (the same options, so a resumed run checks they match)."""
    import shlex

    args = list(ARGV)
    if resume and "--resume" not in args:
        args.append("--resume")
    return shlex.join(["evomerge", *args])


def quiet_progress_bars() -> None:
    """``--no-progress`` also for the bars of the libraries (transformers' "Loading weights",
    huggingface_hub's), for the rest of the process: the environment variable reaches the
    processes started after this call (Ray's workers, the side processes), the calls cover what
    this process already imported. For ``scale``, whose children need it; a command that starts
    none uses :func:`library_bars_off`, which undoes itself."""
    import os
    import sys

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


@contextlib.contextmanager
def library_bars_off() -> Iterator[None]:
    """The libraries' progress bars (transformers', huggingface_hub's) off in this process for the
    block only, as they were afterwards: a caller of :func:`evomerge.cli.main` in a notebook
    keeps its own bars after ``merge -q``."""
    from huggingface_hub import utils as hub
    from transformers.utils import logging as hf_logging

    hub_off, hf_on = hub.are_progress_bars_disabled(), hf_logging.is_progress_bar_enabled()
    hub.disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not hub_off:
            hub.enable_progress_bars()
        if hf_on:
            hf_logging.enable_progress_bar()


SET_HELP = "set a config key, dotted, value in YAML (e.g. --set merge.params.density=0.5); repeat"
ZOO_HELP = "built-in zoo profile (small | default) or a zoo folder"


def set_option() -> Any:
    return typer.Option([], "--set", "-s", help=SET_HELP, metavar="KEY=VALUE")


def zoo_option(default: Optional[str] = None) -> Any:
    return typer.Option(default, "--zoo", help=ZOO_HELP, metavar="PROFILE|PATH")


def small_option() -> Any:
    return typer.Option(False, "--small", help="same as --zoo small")


def zoo_choice(zoo: Optional[str], small: bool) -> Optional[str]:
    """The ``--zoo`` value, with ``--small`` as its alias (the two must not disagree: a folder
    given to ``--zoo`` agrees when it is the small zoo's folder in use, see ``zoo path --small``)."""
    if small:
        if zoo not in (None, "small") and not _is_small_zoo_folder(zoo):
            raise ConfigError(f"--small and --zoo {zoo} disagree; pass one of them")
        return "small"
    return zoo


def _is_small_zoo_folder(zoo: str) -> bool:
    """Whether ``zoo`` (a ``--zoo`` value that is no profile) is the folder of the small zoo in use."""
    from evomerge.zoo import zoo_root_in_use

    if zoo_profile(zoo) is not None:
        return False
    return Path(zoo).expanduser().resolve() == zoo_root_in_use("small").expanduser().resolve()


def zoo_profile(choice: Optional[str]) -> Optional[str]:
    """The profile name when ``choice`` names one, else None (a folder, or nothing)."""
    from evomerge.zoo.model import PROFILES

    return choice if choice in PROFILES else None


def open_zoo(choice: Optional[str], default: str = "default", zoo_dir: Path | None = None, progress: bool = True):
    """The zoo for ``--zoo``: a profile (built into the cache if needed) or an existing zoo folder."""
    from evomerge.zoo import Zoo, ensure_zoo
    from evomerge.zoo.model import PROFILES

    choice = choice or default
    if choice in PROFILES:
        return ensure_zoo(choice, zoo_dir, progress=progress)
    path = Path(choice).expanduser()
    if not path.exists():
        raise ConfigError(f"--zoo {choice}: neither a zoo profile ({', '.join(sorted(PROFILES))}) nor an existing folder")
    return Zoo.open(path)


def zoo_folder(choice: Optional[str], default: str = "default", zoo_dir: Path | None = None) -> Path:
    """The folder :func:`open_zoo` reads for the same arguments, without opening or building it
    (for checks that must come before any work: an output that would overlap the zoo read)."""
    from evomerge.zoo import zoo_root_in_use

    choice = choice or default
    if zoo_profile(choice) is None:
        return Path(choice).expanduser()
    return Path(zoo_dir) if zoo_dir is not None else zoo_root_in_use(choice)


def load_config_with_sets(config: Optional[Path], sets: list[str], flags: dict[str, Any] | None = None,
                          names: dict[str, str] | None = None, defaults: dict[str, Any] | None = None):
    """The config file (or the defaults: the schema's, or the command's own ``defaults``) with ``--set`` values and then the command's own flags
    (as dotted keys; ``names`` gives each key's flag, e.g. ``{"merge.method": "--method"}``)
    applied, validated once. A refused value is reported naming where it came from: the file,
    ``--set`` or the flag (:func:`evomerge.config.sources.load_layered`)."""
    from evomerge.config.sources import load_layered

    return load_layered(config, cli_layers(sets, flags, names), defaults)


def cli_layers(sets: list[str], flags: dict[str, Any] | None = None,
               names: dict[str, str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """What a command lays over its config file, in order: ``--set``, then its flags (dotted key ->
    value, ``None`` = not given), each run of keys labelled by its flag (``names``)."""
    from evomerge.config.overrides import parse_sets

    layers: list[tuple[str, dict[str, Any]]] = [("--set", parse_sets(sets))]
    for key, value in (flags or {}).items():
        if value is not None:
            label = (names or {}).get(key, "flags")
            if layers[-1][0] != label:
                layers.append((label, {}))
            layers[-1][1][key] = value
    return layers


def blamed(err: Exception, config: Optional[Path], sets: list[str], flags: dict[str, Any] | None = None,
           names: dict[str, str] | None = None, keys: str = "") -> Exception:
    """``err`` with each line prefixed by where its keys (all under ``keys``) were set, the layers
    being those :func:`evomerge.cli._common.load_config_with_sets` lays over the file, for a check
    that needs more than the config (the pool's size) (:func:`evomerge.config.sources.blame_layered`)."""
    from evomerge.config.sources import blame_layered

    return blame_layered(err, config, cli_layers(sets, flags, names), under=keys)


def zoo_settings(choice: Optional[str], cfg: Any, default: str) -> tuple[str, Any]:
    """``(profile, cfg)`` for a command whose runner takes a profile name: a zoo folder given to
    ``--zoo`` becomes its profile with ``zoo_dir`` set to the folder."""
    if choice is None or zoo_profile(choice) is not None:
        return choice or default, cfg
    from evomerge.config.overrides import override

    zoo = open_zoo(choice)
    return zoo.profile, override(cfg, {"zoo_dir": str(zoo.root)}, "--zoo")


class EditedStream:
    """A text stream that writes to ``stream`` each write with ``edit`` applied (a ``print`` is
    one write, its newline another; an edit returning ``""`` drops the write): what a cluster
    job's command prints, with paths it removes rewritten or left out (``jobs/``)."""

    def __init__(self, stream, edit) -> None:
        self._stream, self._edit = stream, edit

    def write(self, text: str) -> int:
        self._stream.write(self._edit(text))
        return len(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)
