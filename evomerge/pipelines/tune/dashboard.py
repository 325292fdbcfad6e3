"""The ``optuna-dashboard`` command for a study's storage: safe to print, and it runs as printed.

* SQLite: ``optuna-dashboard 'sqlite:////abs/optuna.db'`` (a relative ``sqlite:///x.db`` made absolute);
* a journal file: ``optuna-dashboard /abs/study.log`` (the dashboard opens a plain file as a
  journal);
* PostgreSQL: ``optuna-dashboard 'postgresql+psycopg2://user@host:5432/db'``, with the password
  in ``$PGPASSWORD`` (or ``~/.pgpass``), which psycopg2's libpq reads. The driver is named
  because SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which evomerge does not
  install; the password is never part of the command (no ``***`` to paste either).

Any URL goes in masked or not: the password and every query value that may be a secret are
dropped (``sslmode`` and the other :data:`~evomerge.storage_uri.SHOWN_QUERY_KEYS` are kept).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


def dashboard_command(url: str) -> str:
    """The shell command that opens the storage at ``url`` in optuna-dashboard."""
    from evomerge.pipelines.tune.storage import _journal_path

    journal = _journal_path(url)
    if journal is not None:
        return f"optuna-dashboard {shlex.quote(str(Path(journal).expanduser().resolve()))}"
    return f"optuna-dashboard {shlex.quote(_without_secrets(url))}"


def password_hint(url: str) -> str:
    """Where the printed command takes the password from ("" when the storage has none)."""
    scheme = url.split("://", 1)[0].split("+", 1)[0]
    if scheme in ("postgresql", "postgres"):
        return "the password from $PGPASSWORD (or ~/.pgpass)"
    if scheme.startswith(("mysql", "mariadb")):
        return "the password from your MySQL option file (~/.my.cnf)"
    return ""


def _without_secrets(url: str) -> str:
    from evomerge.storage_uri import SHOWN_QUERY_KEYS

    if url.startswith("sqlite"):
        return _absolute_sqlite(url)
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme in ("postgresql", "postgres"):
        scheme = "postgresql+psycopg2"
    host = parts.netloc.rsplit("@", 1)[-1]
    user = parts.netloc.rsplit("@", 1)[0].split(":", 1)[0] if "@" in parts.netloc else ""
    netloc = f"{user}@{host}" if user else host
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                       if k.lower() in SHOWN_QUERY_KEYS and "$" not in v and v != "***"])
    return urlunsplit((scheme, netloc, parts.path, query, ""))


def _absolute_sqlite(url: str) -> str:
    """``sqlite:///relative.db`` (relative to the cwd of the command that ran) as
    ``sqlite:////abs/relative.db``, so the printed command opens the study from any folder."""
    head, sep, rest = url.partition(":///")
    path, q, query = rest.partition("?")
    if not sep or not path or path == ":memory:" or Path(path).is_absolute():
        return url
    return f"{head}:///{Path(path).resolve()}{q}{query}"
