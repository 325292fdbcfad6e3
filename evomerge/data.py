"""Task data: prompt/answer examples loaded with ``datasets`` from local JSONL or Parquet files.

Users' own tasks and the built-in zoo's generated tasks load through the same function.
"""

from __future__ import annotations

from pathlib import Path

from evomerge.errors import DataError

REQUIRED_COLUMNS = ("prompt", "answer")


def load_examples(path: str | Path, *, limit: int | None = None):
    """Load a ``datasets.Dataset`` with ``prompt`` and ``answer`` columns from a local file."""
    import datasets

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: task file not found")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        builder = "json"
    elif suffix == ".parquet":
        builder = "parquet"
    else:
        raise DataError(f"{path}: unsupported task file type {suffix!r} (use .jsonl or .parquet)")
    try:
        ds = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:  # datasets raises many types for unreadable files
        raise DataError(f"{path}: cannot read task file ({type(err).__name__}: {err})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; a task file needs {list(REQUIRED_COLUMNS)}")
    if len(ds) == 0:
        raise DataError(f"{path}: the split is empty")
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return ds
