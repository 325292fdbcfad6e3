"""The names of what ``evomerge tune`` writes into ``--out``: one place for the writers
(storage, results, run) and for :data:`TUNE_FILES`, which tells a tune run's folder apart."""

from __future__ import annotations

import re

OPTUNA_DB = "optuna.db"  # the default storage (SQLite)
#: SQLite's own files beside a database (write-ahead log, shared memory, rollback journal)
SQLITE_SIDE_SUFFIXES = ("-wal", "-shm", "-journal")
OPTUNA_DB_SIDE_FILES = tuple(OPTUNA_DB + suffix for suffix in SQLITE_SIDE_SUFFIXES)
#: ``jobs/tune.py``'s workers' own folders in ``--out``: ``worker-<i>``
WORKER_DIR = re.compile(r"worker-\d+")
SUMMARY = "summary.json"
TRIALS_TABLE = "trials.parquet"
BEST_CONFIG = "best_config.yaml"
TRIALS_DIR = "trials"  # the GENOME/Swarm trials' run folders
#: the figures (also their keys in summary.json's ``files``), each written to ``<name>.png``
HISTORY_FIGURE, IMPORTANCE_FIGURE = FIGURES = ("optimization_history", "param_importances")


def figure_file(name: str) -> str:
    return f"{name}.png"


def worker_dir(i: int) -> str:
    """The folder of ``jobs/tune.py``'s worker ``i`` (matches :data:`WORKER_DIR`)."""
    return f"worker-{i}"


#: what ``evomerge tune`` writes into ``--out`` (``jobs/tune.py`` adds ``worker-<i>``): a folder
#: holding only these (and atomic writes' ``.NAME.tmp-*`` files) is a tune run's
TUNE_FILES = frozenset({
    OPTUNA_DB, *OPTUNA_DB_SIDE_FILES, SUMMARY, TRIALS_TABLE, BEST_CONFIG, *map(figure_file, FIGURES), TRIALS_DIR,
})
