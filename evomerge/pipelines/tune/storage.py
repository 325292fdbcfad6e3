"""Optuna storages: where the study lives, chosen by URL; credentials only from the environment.

* default: ``sqlite:///<run dir>/optuna.db`` (one machine, a few processes);
* ``postgresql://user@host:5432/db`` or any SQLAlchemy URL: many workers, heartbeats notice a
  dead worker and its trial is marked failed;
* ``journal:///path/to/study.log`` (or a path ending in ``.log``/``.journal``): Optuna's
  ``JournalStorage(JournalFileBackend)``, an append-only file that is safe on a shared file
  system where SQLite is not.

Precedence: ``--storage`` > ``$EVOMERGE_OPTUNA_STORAGE`` > ``tune.storage`` > default. ``${VAR}``
in a URL is expanded from the environment, so a config can say
``postgresql://evomerge:${PGPASSWORD}@db/optuna``; a literal password in a config file is
refused. Every URL printed or written (messages, logs, ``summary.json``) goes through
:func:`shown_url`: values expanded from the environment are shown as their ``${VAR}``, and the
user-info password and query values are masked (:func:`evomerge.storage_uri.mask_uri`).
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import time
from pathlib import Path

from evomerge.errors import ConfigError
from evomerge.pipelines.tune.files import OPTUNA_DB
from evomerge.storage_uri import mask_uri

ENV_VAR = "EVOMERGE_OPTUNA_STORAGE"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_LITERAL_PASSWORD = re.compile(r"://[^/:@\s]*:([^@/\s]*)@")
_QUERY_SECRET = re.compile(r"[?&;](?:password|passwd|pwd|sslpassword|token|secret|access_key|secret_key)=([^&;#\s]*)",
                           re.IGNORECASE)
#: value -> ``${VAR}`` for every environment value expanded into a storage URL by this process.
_EXPANDED: dict[str, str] = {}


def expand_env(url: str, source: str) -> str:
    """Replace ``${VAR}`` with the environment's value; a missing variable is an error."""

    def sub(m: re.Match) -> str:
        if m.group(1) not in os.environ:
            raise ConfigError(f"{source}: environment variable `{m.group(1)}` used in the storage URL is not set")
        value = os.environ[m.group(1)]
        if len(value) >= 3:  # shorter values would mask unrelated text
            _EXPANDED[value] = m.group(0)
        return value

    return _VAR.sub(sub, url)


def shown_url(text: str) -> str:
    """``text`` (a URL or a message holding one) safe to print or write: see the module docstring."""
    return mask_uri(text, _EXPANDED)


def resolve_storage_url(cli: str | None, config_value: str | None, run_dir: Path) -> str:
    """The storage URL to use, following the precedence above (env vars expanded)."""
    if config_value:
        literal = [m.group(1) for r in (_LITERAL_PASSWORD, _QUERY_SECRET) for m in r.finditer(config_value)]
        if any(v and not _VAR.fullmatch(v) for v in literal):
            raise ConfigError(
                "tune.storage: the URL holds a literal password; put it in the environment instead, "
                f"e.g. `{ENV_VAR}` or `${{PGPASSWORD}}` inside the URL"
            )
    if cli:
        return expand_env(cli, "--storage")
    if os.environ.get(ENV_VAR):
        return expand_env(os.environ[ENV_VAR], ENV_VAR)
    if config_value:
        return expand_env(config_value, "tune.storage")
    return f"sqlite:///{(Path(run_dir) / OPTUNA_DB).resolve()}"


def _journal_path(url: str) -> str | None:
    if url.startswith("journal://"):
        return url[len("journal://"):]
    if "://" not in url and url.endswith((".log", ".journal")):
        return url
    return None


def local_storage_path(url: str) -> Path | None:
    """The file a local storage names (SQLite's database, Optuna's journal), else None (a
    database server, or SQLite in memory)."""
    journal = _journal_path(url)
    if journal is not None:
        return Path(journal).expanduser()
    if url.startswith("sqlite"):
        db = url.split(":///", 1)[-1]
        return Path(db) if db and db != ":memory:" else None
    return None


def postgres_driver(url: str) -> str:
    """Name a PostgreSQL driver that is installed: SQLAlchemy 2.1 defaults to psycopg 3, while
    evomerge's ``postgres`` extra installs psycopg2."""
    import importlib.util

    scheme, rest = url.split("://", 1)
    if "+" in scheme:
        return url
    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2://{rest}"
    return f"postgresql://{rest}"


def open_storage(url: str):
    """An Optuna storage for ``url``; raises :class:`ConfigError` if it cannot be reached."""
    shown = shown_url(url)
    journal = _journal_path(url)
    if journal is not None:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(journal).expanduser()
        if not path.parent.is_dir():
            raise ConfigError(f"Optuna storage `{shown}`: directory {path.parent} does not exist")
        return JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise ConfigError(
            f"Optuna storage `{shown}`: not a URL; use sqlite:///path.db, postgresql://host/db or journal:///path.log"
        )
    engine_kwargs: dict = {}
    if url.startswith("sqlite"):
        db = local_storage_path(url)
        if db is not None and not db.parent.is_dir():
            raise ConfigError(f"Optuna storage `{shown}`: directory {db.parent} does not exist")
        engine_kwargs = {"connect_args": {"timeout": 60}}  # several processes may write at once
        if db is not None:
            try:
                _write_ahead_log(db)
            except sqlite3.Error as err:  # a folder SQLite cannot write (/proc, read-only), a file that is no database
                raise ConfigError(f"Optuna storage `{shown}` cannot be opened: {shown_url(str(err))}") from None
    elif url.startswith(("postgresql", "postgres")):
        url = postgres_driver(url)
        engine_kwargs = {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    # Two workers creating the same new SQLite file race on its schema: the loser retries.
    attempts = 5 if url.startswith("sqlite") else 1
    for attempt in range(attempts):
        try:
            return _rdb_storage(url, engine_kwargs)
        except Exception as err:  # sqlalchemy errors, missing drivers
            if attempt + 1 < attempts:
                time.sleep(0.5 * (attempt + 1))
                continue
            msg = shown_url(str(err).split("\n")[0].replace(url, shown))
            raise ConfigError(f"Optuna storage `{shown}` cannot be reached: {msg}") from None


def _write_ahead_log(db: Path) -> None:
    """Put the SQLite file in WAL mode (kept by the file): a reader then never blocks a writer.
    In the default rollback journal, a read cut by Ctrl-C kept its lock while the heartbeat
    thread waited to write, and the interrupted worker's last writes (the cut trial's error, its
    retry) waited out the 60 s busy timeout instead of taking milliseconds."""
    with contextlib.closing(sqlite3.connect(str(db), timeout=60)) as con:
        con.execute("PRAGMA journal_mode=WAL")


def _rdb_storage(url: str, engine_kwargs: dict):
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
        from evomerge.pipelines.tune.study import retry_callback

        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=30, grace_period=120,
                                          heartbeat_stale_trial_callback=retry_callback())
