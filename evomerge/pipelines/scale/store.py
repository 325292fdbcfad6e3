"""Append-only results of a scale run: one Parquet file per finished cell.

A cell's file appears atomically when the cell is done, so the set of files *is* the resume
state: a rerun skips every cell whose file exists, and the report concatenates them. A file that
cannot be read (a disk fault, a copy cut short, a file replaced by hand) is refused by name
(:class:`DamagedCellFile`); a resumed run removes it and computes its cell again
(:meth:`CellStore.drop_damaged`).

Every other file of a run the report reads (``plan.json``, ``expert_gains.json``,
``search_stop.json``, ``timing.json``, ``analysis/summary.json``, a search's ``result.json``,
``population_test.json`` and ``history.parquet``) goes through the same kind of checked reader (:func:`read_json_file`,
:func:`read_parquet_file`): one that cannot be read is refused as :class:`DamagedRunFile`, one
line naming it, the problem and the way on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from evomerge.errors import DataError
from evomerge.io import write_parquet_atomic

# One row per (cell, seed, task, split). ``in_subset`` marks the tasks of the merged experts.
SCORE_SCHEMA = pa.schema(
    [
        ("cell", pa.string()),
        ("kind", pa.string()),  # base | expert | merge | search
        ("k", pa.int32()),
        ("method", pa.string()),
        ("rht", pa.bool_()),
        ("seed", pa.int64()),
        ("experts", pa.string()),  # comma-joined names of the merged experts, in order
        ("task", pa.string()),
        ("in_subset", pa.bool_()),
        ("split", pa.string()),
        ("score", pa.float64()),
        ("seconds", pa.float64()),  # wall time of the whole cell (merge + all evaluations)
        ("cross_entropy", pa.float64()),  # answer-token cross-entropy (nats/token) on the same rows
    ]
)

# One row per (cell, rht, split, task, example): the values whose means are the cell's
# ``score`` / ``cross_entropy`` of that (rht, task, split) in SCORE_SCHEMA. ``rht`` tells the
# two variants of a search cell apart (a merge cell holds one variant, as its scores do).
EXAMPLE_SCHEMA = pa.schema(
    [
        ("cell", pa.string()),
        ("task", pa.string()),
        ("split", pa.string()),
        ("row", pa.int32()),  # the example's index in the task's split, in the split file's order
        ("score", pa.float64()),  # the run's metric (evaluation.metric) on this example
        ("cross_entropy", pa.float64()),  # mean cross-entropy per answer token (nats)
        ("rht", pa.bool_()),
    ]
)

SAMPLE_SCHEMA = pa.schema(
    [
        ("cell", pa.string()),
        ("k", pa.int32()),
        ("method", pa.string()),
        ("rht", pa.bool_()),
        ("seed", pa.int64()),
        ("value", pa.float32()),
    ]
)


class DamagedRunFile(DataError):
    """A file of a run that cannot be read: ``PATH: not readable JSON|Parquet (problem); remedy``."""

    def __init__(self, path: Path, kind: str, problem: str, remedy: str):
        self.path, self.problem = path, problem
        super().__init__(f"{path}: not readable {kind} ({problem}); {remedy}")


def read_json_file(path: Path, remedy: str, *, kind: type = dict, keys: tuple[str, ...] = ()) -> Any:
    """The JSON value of ``path`` (a ``kind``: an object, or a list; with ``keys``), or
    :class:`DamagedRunFile` naming it and ``remedy`` (the way on) when it cannot be read."""
    import json

    try:
        value = json.loads(Path(path).read_bytes())
    except (OSError, UnicodeDecodeError, ValueError) as err:  # (json.JSONDecodeError is a ValueError)
        raise DamagedRunFile(path, "JSON", _json_problem(err), remedy) from None
    if not isinstance(value, kind):
        raise DamagedRunFile(path, "JSON", f"{_json_type(value)}, not {_json_type(kind())}", remedy)
    lacking = [k for k in keys if k not in value]
    if lacking:
        raise DamagedRunFile(path, "JSON", f"no key {', '.join(f'`{k}`' for k in lacking)}", remedy)
    return value


def read_parquet_file(path: Path, remedy: str, columns: list[str] | None = None) -> pa.Table:
    """The table of ``path`` (only ``columns``, which it must have), or :class:`DamagedRunFile`
    naming it and ``remedy`` when it cannot be read (not Parquet, cut short, a column missing)."""
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise DamagedRunFile(path, "Parquet", damage(err), remedy) from None
    lacking = [c for c in columns or () if c not in table.column_names]
    if lacking:
        raise DamagedRunFile(path, "Parquet", f"no column {', '.join(f'`{c}`' for c in lacking)}", remedy)
    return table.select(columns) if columns else table


def _json_problem(err: Exception) -> str:
    if isinstance(err, OSError):
        return err.strerror or type(err).__name__
    if isinstance(err, UnicodeDecodeError):
        return "not UTF-8 text"
    return str(err).strip() or type(err).__name__


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), "a number")


class DamagedCellFile(DataError):
    """A cell's file (``cells/``, ``examples/`` or ``samples/``) that cannot be read: ``path``,
    ``problem`` (what pyarrow found) and how to recover."""

    def __init__(self, path: Path, problem: str):
        self.path, self.problem = path, problem
        super().__init__(f"{path}: not a readable cell file ({problem}); `evomerge scale --out {path.parent.parent} "
                         "--resume` computes that cell again (it replaces unreadable cell files)")


def read_cell_file(path: Path, schema: pa.Schema) -> pa.Table:
    """One cell's file in ``schema`` (:class:`DamagedCellFile`, naming it, when it cannot be read)."""
    try:
        return _conform(pq.read_table(path), schema)
    except pa.ArrowException as err:  # (ArrowInvalid: not Parquet, cut short; a cast that fails)
        raise DamagedCellFile(path, damage(err)) from None


def damage(err: Exception) -> str:
    """What pyarrow found wrong with a file, without the path it repeats: ``Parquet magic bytes not found in footer``."""
    text = str(err).strip()
    if text.startswith("Could not open Parquet input source") and "': " in text:
        text = text.split("': ", 1)[1]
    return text.split(". ")[0].rstrip(".").splitlines()[0] if text else type(err).__name__


class CellStore:
    """``run_dir/cells/<cell>.parquet`` (scores), ``run_dir/examples/<cell>.parquet`` (the
    per-example values behind them) and ``run_dir/samples/<cell>.parquet`` (a fixed-size random
    sample of the merged task vector's entries, for weight histograms)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.cells_dir = self.run_dir / "cells"
        self.samples_dir = self.run_dir / "samples"
        self.examples_dir = self.run_dir / "examples"

    def done(self) -> set[str]:
        if not self.cells_dir.is_dir():
            return set()
        return {p.stem for p in self.cells_dir.glob("*.parquet")}

    def write(self, cell_id: str, rows: list[dict[str, Any]], sample: Iterable[dict[str, Any]] = (),
              examples: pa.Table | None = None) -> None:
        """Write a finished cell: its examples and sample first, its scores last (the scores'
        file marks the cell done, so a done cell always has the examples it was written with)."""
        sample = list(sample)
        if examples is not None:
            write_parquet_atomic(self.examples_dir / f"{cell_id}.parquet", _conform(examples, EXAMPLE_SCHEMA))
        if sample:
            write_parquet_atomic(self.samples_dir / f"{cell_id}.parquet", pa.Table.from_pylist(sample, SAMPLE_SCHEMA))
        write_parquet_atomic(self.cells_dir / f"{cell_id}.parquet", pa.Table.from_pylist(rows, SCORE_SCHEMA))

    def _concat(self, folder: Path, schema: pa.Schema, ids: Iterable[str] | None) -> pa.Table:
        """Every file of ``folder`` (or only those of the cells ``ids`` that exist), in file-name order."""
        files = table_files(folder, ids)
        if not files:
            return schema.empty_table()
        return pa.concat_tables([read_cell_file(f, schema) for f in files])

    def scores(self, ids: Iterable[str] | None = None) -> pa.Table:
        """The score rows of every finished cell (``ids``: of those cells only)."""
        return self._concat(self.cells_dir, SCORE_SCHEMA, ids)

    def examples(self, ids: Iterable[str] | None = None) -> pa.Table:
        """The per-example values of every cell that has them (``ids``: of those cells only);
        cells of a run directory written before examples were kept are absent."""
        return self._concat(self.examples_dir, EXAMPLE_SCHEMA, ids)

    def samples(self, ids: Iterable[str] | None = None) -> pa.Table:
        """The weight samples of every cell that has them (``ids``: of those cells only)."""
        return self._concat(self.samples_dir, SAMPLE_SCHEMA, ids)

    def drop_damaged(self, ids: Iterable[str]) -> list[str]:
        """Remove every file of the finished cells ``ids`` that cannot be read, and the cell's
        score file with it (it marks the cell done): a resumed run computes those cells again.
        One ``PATH: problem`` line per file removed."""
        lines = []
        for cell_id in sorted(set(ids)):
            bad = []
            for folder, schema in ((self.cells_dir, SCORE_SCHEMA), (self.examples_dir, EXAMPLE_SCHEMA),
                                   (self.samples_dir, SAMPLE_SCHEMA)):
                path = folder / f"{cell_id}.parquet"
                if path.is_file():
                    try:
                        read_cell_file(path, schema)
                    except DamagedCellFile as err:
                        bad.append(path)
                        lines.append(f"{path}: not a readable cell file ({err.problem})")
            if bad:
                for path in bad:
                    path.unlink(missing_ok=True)
                (self.cells_dir / f"{cell_id}.parquet").unlink(missing_ok=True)
        return lines


# the columns a cell file of an older run may lack (score files before cross-entropy was kept)
_ADDED_LATER = frozenset({"cross_entropy"})


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A cell file in ``schema``: columns missing in files of older runs are filled with nulls;
    a file without one of the others is another table's (pa.ArrowInvalid, naming them)."""
    missing = [f.name for f in schema if f.name not in table.column_names and f.name not in _ADDED_LATER]
    if missing:
        raise pa.ArrowInvalid(f"no column {', '.join(missing)}: not a file of this table")
    cols = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
            for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def table_files(folder: Path, ids: Iterable[str] | None) -> list[Path]:
    """The cells' Parquet files of ``folder`` (every one, or those of the cells ``ids`` that
    exist), in file-name order: the order every reader of a run concatenates them in."""
    if not folder.is_dir():
        return []
    if ids is None:
        return sorted(folder.glob("*.parquet"))
    return sorted(f for f in (folder / f"{i}.parquet" for i in set(ids)) if f.is_file())
