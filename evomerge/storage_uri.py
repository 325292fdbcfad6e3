"""Where results go: a local path, a shared file system path, or an object-store URI.

Jobs compute into a local run directory and copy it to the location their ``--out`` names while
they run and however they end (``jobs/_mirror.py``, over :func:`resolve`). Anything
``pyarrow.fs.FileSystem.from_uri`` understands works: ``/mnt/shared/runs``,
``file:///tmp/runs``, ``s3://bucket/prefix``, ``gs://bucket/prefix``, ``hdfs://...``.
Credentials for object stores come from the environment (the standard AWS/GCS variables or
the machine's role), never from the config.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from evomerge.errors import ConfigError

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_uri(location: str | os.PathLike) -> bool:
    return bool(_SCHEME.match(str(location)))


def resolve(location: str | os.PathLike):
    """``(pyarrow FileSystem, path inside it)`` for a local path or URI."""
    import pyarrow.fs as pafs

    loc = str(location)
    if not is_uri(loc):
        return pafs.LocalFileSystem(), str(Path(loc).expanduser().resolve())
    try:
        return pafs.FileSystem.from_uri(loc)
    except (ValueError, OSError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise ConfigError(f"output `{mask_uri(loc)}`: cannot open this location ({err})") from None


#: Query keys whose values are shown; every other query value is masked (password, token, ...).
SHOWN_QUERY_KEYS = frozenset({"sslmode", "connect_timeout", "application_name", "target_session_attrs", "charset",
                              "timeout", "region", "endpoint_override", "scheme"})
_USERINFO_PASSWORD = re.compile(r"(://[^/:@\s]*:)\S*?@(?=[^@/\s]*(?:[/?#;\s]|$))")
_DSN_PASSWORD = re.compile(r"\b(password|passwd|pwd)(\s*=\s*)(?!\$\{)[^\s&;]+", re.IGNORECASE)
_QUERY_ITEM = re.compile(r"([?&;])([^=&;#\s?]+)=([^&;#\s]*)")
# a quoted run of text (a URL a message shows as `URL`): masked inside its quotes, so that a
# value running to the closing quote does not take the quote with it; the value itself is masked
# to its end whatever characters it holds (a password may hold any)
_QUOTED = re.compile(r"([`\"'])(\S+)\1(?=\s|$|[.,;:)\]])")


def mask_uri(url: str, secrets: dict[str, str] | None = None) -> str:
    """``url`` (or a message holding URLs) with every secret hidden, for logs, messages and files.

    Masks the password of ``scheme://user:password@host``, every query value except the
    harmless :data:`SHOWN_QUERY_KEYS` (``?password=...``, ``?token=...``), and each value in
    ``secrets`` (value -> what to show instead, e.g. the ``${VAR}`` it was expanded from).
    """
    text = str(url)
    for value, shown in sorted((secrets or {}).items(), key=lambda kv: -len(kv[0])):
        if value:
            text = text.replace(value, shown)
    text = _USERINFO_PASSWORD.sub(lambda m: m.group(0) if m.group(0)[len(m.group(1)):-1].startswith("${")
                                  else f"{m.group(1)}***@", text)

    def query(m: re.Match) -> str:
        key, value = m.group(2), m.group(3)
        if key.lower() in SHOWN_QUERY_KEYS or value.startswith("${") or value == "***":
            return m.group(0)
        return f"{m.group(1)}{key}=***"

    def values(part: str) -> str:
        part = _QUERY_ITEM.sub(query, part)
        return _DSN_PASSWORD.sub(lambda m: m.group(0) if m.group(0).endswith("***")
                                 else f"{m.group(1)}{m.group(2)}***", part)

    out, at = [], 0
    for m in _QUOTED.finditer(text):  # quoted runs inside their quotes, the text between them as it is
        out += [values(text[at:m.start()]), f"{m.group(1)}{values(m.group(2))}{m.group(1)}"]
        at = m.end()
    return "".join(out) + values(text[at:])
