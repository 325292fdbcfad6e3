"""Task data: prompt/answer examples from local JSONL, JSON or Parquet files, as ``datasets.Dataset``.

The one loader of task files: users' own tasks (``evaluate --task``, ``evaluation.task_files``,
``merge.data``) and the built-in zoo's tasks all load through :func:`load_examples` (one file)
or :func:`load_task` (a file or a task folder). Every row is checked before any work: text
that is not UTF-8, a missing, null or empty prompt/answer, a line or file over the size limits
is refused with the file, the line and the problem. Reading is streamed, so a huge line is
refused after reading :data:`MAX_LINE_BYTES`, not after filling memory.

Values (the same rule for every format): a prompt or answer is a string. An integer is accepted
as its decimal text, as written in a JSON file (``5``, ``-0``, any number of digits) or from a
Parquet integer column, which is lossless. Anything else is refused, naming the file, the row
and the column: a float (``3.10`` would silently become ``"3.1"``), ``NaN``/``Infinity`` (which
Python's ``json`` accepts), a boolean, null, a list or an object; quote it to keep it as text.

A task folder holds one file per split, ``<split>`` plus one of :data:`TASK_EXTENSIONS`; two
files of one split (``validation.parquet`` and ``validation.jsonl``) are refused as ambiguous.

Rows are numbered as the user sees the file, from 1: ``line N`` of a JSONL file (blank lines
count), ``row N`` of a Parquet table or a JSON array. A JSONL dataset carries each example's line
in the column :data:`LINE_COLUMN`, so that the encoding checks
(vocabulary, context length) name the same line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from evomerge.errors import DataError, cause_text

REQUIRED_COLUMNS = ("prompt", "answer")
#: Longest JSONL line (one example) accepted.
MAX_LINE_BYTES = 8 << 20
#: Largest task file accepted.
MAX_FILE_BYTES = 4 << 30
#: Column of a JSONL task file's dataset: each example's line in the file (from 1), read by
#: :func:`evomerge.evaluation.encoding.encode_dataset` to name the line in its errors.
LINE_COLUMN = "__line__"
#: Extensions of task files: the one place that says which formats are read (errors list them).
TASK_EXTENSIONS = (".parquet", ".jsonl", ".json")


def _one_of(names: Sequence[str], word: str = "or") -> str:
    """``a, b or c``."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {word} {names[-1]}"


def _split_names(split: str, word: str = "or") -> str:
    """``validation.parquet, validation.jsonl or validation.json``: the files a split may be."""
    return _one_of([f"{split}{ext}" for ext in TASK_EXTENSIONS], word)


#: ``.parquet, .jsonl or .json``: the task file types, as errors list them.
FILE_TYPES = _one_of(TASK_EXTENSIONS)


_SOURCE_PREFIX = "evomerge task file: "


def _info(path: Path):
    """The dataset's info, recording the file it was read from (kept by ``select``, ``sort``)."""
    import datasets

    return datasets.DatasetInfo(description=f"{_SOURCE_PREFIX}{path}")


def source_file(ds) -> str | None:
    """The task file a dataset of :func:`load_examples` was read from (``None`` for other datasets)."""
    desc = getattr(getattr(ds, "info", None), "description", None) or ""
    return desc[len(_SOURCE_PREFIX):] if desc.startswith(_SOURCE_PREFIX) else None


def _check_file(path: Path) -> str:
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a task file (a {FILE_TYPES} file of prompt/answer rows)")
    if not path.exists():
        raise DataError(f"{path}: task file not found")
    if not path.is_file():
        raise DataError(f"{path}: is not a regular file; a task file is a {FILE_TYPES} file")
    suffix = path.suffix.lower()
    if suffix not in TASK_EXTENSIONS:
        raise DataError(f"{path}: unsupported task file type {suffix!r} (use {FILE_TYPES})")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise DataError(f"{path}: {size / 2**30:.1f} GiB is over the {MAX_FILE_BYTES >> 30} GiB limit for a task file")
    if size == 0:
        raise DataError(f"{path}: empty file (no examples)")
    return suffix


class _JsonInt(str):
    """A JSON integer, kept as written (``json.loads(parse_int=...)``): accepted as its text."""


class _JsonNonText(str):
    """A JSON float literal (``3.10``) or constant (``NaN``, ``Infinity``), kept as written to be
    refused by :func:`_text` naming it as the user wrote it."""


def _json_loads(text: str) -> Any:
    """``json.loads`` keeping numbers as written: no float rounding, no ``int`` conversion (whose
    4300-digit limit would raise a ValueError), and ``NaN``/``Infinity`` marked for refusal."""
    return json.loads(text, parse_int=_JsonInt, parse_float=_JsonNonText, parse_constant=_JsonNonText)


def _not_text(value: Any) -> str:
    """What a refused prompt/answer value is, in the user's terms."""
    if isinstance(value, _JsonNonText):
        if value in ("NaN", "Infinity", "-Infinity"):
            return f"{value} instead"
        return f"the number {value} instead: only integers are read as text; quote it (\"{value}\") to keep it as written"
    if isinstance(value, bool):
        return f"the boolean {json.dumps(value)} instead"
    if isinstance(value, float):
        return f"the float {value!r} instead: store the column as strings"
    if isinstance(value, (list, tuple)):
        return "a list instead"
    if isinstance(value, dict):
        return "an object instead"
    return f"a {type(value).__name__} instead"


def _text(value: Any, path: Path, where: str, column: str) -> str:
    """A prompt/answer value as text: a string, or an integer as its decimal text (a JSON integer
    as written). Null, empty, floats (NaN/Infinity too), booleans, lists, objects are refused."""
    if value is None:
        raise DataError(f"{path}: {where}: `{column}` is null")
    if isinstance(value, _JsonNonText) or isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{path}: {where}: `{column}` must be a string (or an integer). Got {_not_text(value)}.")
    text = str(value)  # a plain str, also of a JSON integer (a str subclass)
    if len(text) > MAX_LINE_BYTES:
        raise DataError(f"{path}: {where}: `{column}` is longer than the {MAX_LINE_BYTES >> 20} MiB limit for one example")
    if not text.strip():
        raise DataError(f"{path}: {where}: `{column}` is empty")
    return text


def _jsonl_rows(path: Path) -> Iterable[tuple[int, Any]]:
    """``(line number, parsed JSON)`` per non-blank line, each line at most MAX_LINE_BYTES."""
    with open(path, "rb") as fh:
        n = 0
        while True:
            raw = fh.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            n += 1
            if len(raw) > MAX_LINE_BYTES:
                raise DataError(f"{path}: line {n} is longer than the {MAX_LINE_BYTES >> 20} MiB limit for one example")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}: line {n}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column "
                                f"{err.start + 1}); save the file as UTF-8") from None
            if not line.strip():
                continue
            line = line.rstrip("\r\n")  # so that json's position is a column of this line
            try:
                row = _json_loads(line)
            except json.JSONDecodeError as err:  # err.pos: the character of this line, from 0
                at = f"column {err.pos + 1}"
                if err.pos >= len(line.rstrip()):
                    at = f"the end of the line ({at})"
                raise DataError(f"{path}: line {n}: not valid JSON: {err.msg} at {at}") from None
            except RecursionError:
                raise DataError(f"{path}: line {n}: JSON nested too deeply to read") from None
            yield n, row


def _is_json_array(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(64).lstrip().startswith(b"[")


def _json_rows(path: Path) -> Iterable[tuple[int, Any]]:
    """A ``.json`` file: a JSON array of objects, or JSON Lines."""
    if not _is_json_array(path):
        yield from _jsonl_rows(path)
        return
    try:
        rows = _json_loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte offset {err.start}); save the file as UTF-8") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to read") from None
    yield from ((i, r) for i, r in enumerate(rows, 1))


def _read_json(path: Path, suffix: str, limit: int | None):
    import datasets

    prompts: list[str] = []
    answers: list[str] = []
    lines: list[int] = []
    jsonl = suffix == ".jsonl" or not _is_json_array(path)
    unit = "line" if jsonl else "row"
    rows = _jsonl_rows(path) if suffix == ".jsonl" else _json_rows(path)
    for n, row in rows:
        where = f"{unit} {n}"
        if not isinstance(row, dict):
            raise DataError(f"{path}: {where}: expected a JSON object with {list(REQUIRED_COLUMNS)}")
        missing = [c for c in REQUIRED_COLUMNS if c not in row]
        if missing:
            raise DataError(f"{path}: {where}: missing column(s) {missing}; a task file needs {list(REQUIRED_COLUMNS)}")
        prompts.append(_text(row["prompt"], path, where, "prompt"))
        answers.append(_text(row["answer"], path, where, "answer"))
        lines.append(n)
        if limit is not None and len(prompts) >= limit:
            break
    if not prompts:
        raise DataError(f"{path}: no examples (only blank lines)")
    columns = {"prompt": prompts, "answer": answers}
    if jsonl:  # rows of a JSON array are numbered as a table's, from 1
        columns[LINE_COLUMN] = lines
    return datasets.Dataset.from_dict(columns, info=_info(path))


def _read_parquet(path: Path, limit: int | None):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: cannot read the Parquet file ({cause_text(err)})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; a task file needs {list(REQUIRED_COLUMNS)}")
    if table.num_rows == 0:
        raise DataError(f"{path}: no examples (0 rows)")
    if limit is not None:
        table = table.slice(0, limit)
    for column in REQUIRED_COLUMNS:
        for i, value in enumerate(table.column(column).to_pylist()):
            _text(value, path, f"row {i + 1}", column)
        kind = table.schema.field(column).type
        if pa.types.is_integer(kind.value_type if pa.types.is_dictionary(kind) else kind):
            # read as its decimal text, as a JSON integer is (the encoders and statistics take strings)
            i = table.schema.get_field_index(column)
            table = table.set_column(i, column, table.column(column).cast(pa.string()))
    return datasets.Dataset(table, info=_info(path))


def load_examples(path: str | Path, *, limit: int | None = None):
    """A ``datasets.Dataset`` with ``prompt`` and ``answer`` columns from one local file (checked)."""
    path = Path(path)
    suffix = _check_file(path)
    if suffix == ".parquet":
        return _read_parquet(path, limit)
    return _read_json(path, suffix, limit)


#: The split a single task file is (a task folder holds one file per split).
FILE_SPLIT = "validation"
#: Names of a single file that say it is another split: read as validation, every choice of a
#: run (the searches' fitness, the stop rules, the peaks) would be made on that data.
OTHER_SPLIT_NAMES = ("test", "train")


def split_files(folder: Path, split: str) -> list[Path]:
    """Every ``folder/<split><ext>`` of :data:`TASK_EXTENSIONS` that exists (a folder of that
    name too: it is refused as a folder by :func:`load_examples`)."""
    return [folder / f"{split}{ext}" for ext in TASK_EXTENSIONS if (folder / f"{split}{ext}").exists()]


def find_split(folder: Path, split: str, where: str = "") -> Path | None:
    """The file of ``split`` in a task folder, ``None`` if there is none. Two files of the split
    (``validation.parquet`` and ``validation.jsonl``) are refused: which one is the split is not
    for the reader to guess. ``where`` prefixes the error (e.g. the setting that names the folder)."""
    found = split_files(folder, split)
    if len(found) > 1:
        raise DataError(f"{where}{folder}: ambiguous {split} split: this task folder holds "
                        f"{_one_of([f.name for f in found], 'and')}; keep one")
    return found[0] if found else None


def load_task(path: str | Path, splits: Sequence[str] = ("validation",), *, required: Sequence[str] | None = None,
              source: str | None = None) -> dict[str, Any]:
    """A task's splits: a folder holds one ``<split>`` file of :data:`TASK_EXTENSIONS` per split
    (two of one split are refused); a single file is the :data:`FILE_SPLIT` (validation) split,
    and nothing else.

    Splits of ``required`` (default: the first) must exist: a required split other than
    validation is refused for a single file, naming the file, rather than read from it; so is a
    single file named as another split (``test.jsonl``, ``train.parquet``), which would
    otherwise be read as validation. Every split's file is found (and a missing or ambiguous
    one refused) before any is read.
    ``source`` names the setting in errors (e.g. ``evaluation.task_files.qa``).
    """
    path = Path(path)
    where = f"{source}: " if source else ""
    required = list(splits[:1]) if required is None else list(required)
    if not path.exists():
        raise DataError(f"{where}{path}: task file or folder not found")
    if not path.is_dir():
        named = path.stem.lower()
        if named in OTHER_SPLIT_NAMES:
            raise DataError(f"{where}{path}: a single task file is read as the {FILE_SPLIT} split, where every choice "
                            f"is made, but this one is named as the {named} split; give the task folder holding "
                            f"{FILE_SPLIT}.jsonl and {named}.jsonl (or rename the file if it holds {FILE_SPLIT} data)")
        other = [s for s in required if s != FILE_SPLIT]
        if other:
            raise DataError(f"{where}{path}: a single task file is the {FILE_SPLIT} split; the {other[0]} split needs "
                            f"a task folder holding {_split_names(other[0])}")
        return {FILE_SPLIT: load_examples(path)} if FILE_SPLIT in splits else {}
    files = {}
    for split in splits:
        found = find_split(path, split, where)
        if found is not None:
            files[split] = found
        elif split in required:
            raise DataError(f"{where}{path}: no {_split_names(split)} in this task folder")
    return {split: load_examples(found) for split, found in files.items()}
