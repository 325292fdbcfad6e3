"""User-facing errors. Each message names the file or parameter and the problem.

The CLI catches :class:`EvomergeError`, prints its message and exits non-zero, so
anything a user can get wrong raises one of these (never ``assert``).
"""

from __future__ import annotations


class EvomergeError(Exception):
    """Base class for errors caused by input the user can fix."""


class ConfigError(EvomergeError):
    """An invalid configuration value, unknown method or parameter."""


class ExpertLoadError(EvomergeError):
    """An expert, base model or checkpoint that cannot be read or does not fit the pool."""


class DataError(EvomergeError):
    """A task/data file that is missing, empty or lacks required columns."""


class OutputExistsError(EvomergeError):
    """The output path exists and ``overwrite`` was not given."""


class ClusterError(EvomergeError):
    """Ray could not be started or reached (an overloaded machine, a head that is down)."""


class OutputError(EvomergeError):
    """The output cannot be written (a read-only or virtual file system, a full disk, a folder
    where a file is expected, another run writing the same destination)."""


def os_error_message(err: OSError, path: object = None) -> str:
    """``PATH: reason`` for an :class:`OSError` (its own file name when it has one)."""
    where = err.filename if err.filename is not None else path
    reason = err.strerror or type(err).__name__
    return f"{where}: {reason}" if where is not None else reason


def cause_text(err: BaseException, limit: int = 600) -> str:
    """A library's error message for one ``error:`` line: on one line, and when longer than
    ``limit`` cut at a word boundary with `` ...`` (not mid-word, where it reads as the end)."""
    text = " ".join(str(err).split()) or type(err).__name__
    if len(text) <= limit:
        return text
    head = text[:limit + 1]  # (a space just past the limit ends a whole word)
    cut = head.rsplit(" ", 1)[0] if " " in head else text[:limit]  # one long word: cut it
    return f"{cut} ..."
