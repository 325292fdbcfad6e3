"""How user task files are read (``evomerge.evaluation.task_data``), through ``evomerge evaluate
--base BASE --task t=PATH`` on real files in ``tmp_path`` and the small zoo's base:

1. A task folder holding two files of one split (``validation.parquet`` and ``validation.jsonl``)
   is refused as ambiguous, naming the folder and the files, before any file is read (it used
   to read the Parquet file silently).
2. One value rule for JSONL, JSON and Parquet: a prompt/answer is a string, or an integer read as
   its decimal text as written; a float (``3.10`` became ``"3.1"``), ``NaN``/``Infinity`` (they
   became ``"nan"``/``"inf"``), a boolean, null, a list or an object is refused, naming the file,
   the line or row (from 1) and the column.
3. The messages that list the accepted formats list all of ``TASK_EXTENSIONS`` (``.json`` was
   missing), and each of them is really read.
4. Invalid JSON names the file, the line and json's own message with the column in that line
   (a line missing its closing ``}`` said "column 1").
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evomerge.errors import DataError
from evomerge.evaluation.task_data import TASK_EXTENSIONS, load_examples, load_task
from evomerge.io import sha256_tree
from _cli_helpers import one_error, run_cli

ROWS = [{"prompt": "12", "answer": "21"}, {"prompt": "345", "answer": "543"}, {"prompt": "6", "answer": "6"}]


@pytest.fixture(scope="module")
def base(small_zoo) -> Path:
    return small_zoo.base_dir


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def jsonl(path: Path, rows) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


def parquet(path: Path, columns: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def evaluate(base, task, *extra) -> list:
    return ["evaluate", "--base", base, "--task", f"t={task}", "--max-samples", "3", *extra]


def refused(args, capsys, inputs=()) -> str:
    """The one ``error:`` line of a refused command (exit 2, no traceback), inputs unchanged."""
    before = {str(p): sha256_tree(p) for p in inputs}
    line = one_error(args, capsys)
    assert {str(p): sha256_tree(p) for p in inputs} == before
    return line


def score(base, task, capsys, *extra) -> float:
    code, out, err = run_cli(evaluate(base, task, *extra), capsys)
    assert code == 0, err
    return float(out.splitlines()[2].split()[1])


# --- 1. two files of one split -------------------------------------------------------------------------
def test_two_files_of_one_split_are_refused_as_ambiguous(base, tmp_path, capsys) -> None:
    folder = tmp_path / "t"
    parquet(folder / "validation.parquet", {"prompt": ["12", "3"], "answer": ["21", "3"]})
    jsonl(folder / "validation.jsonl", [{"prompt": "12", "answer": "99"}])
    # before: exit 0, validation.parquet scored and validation.jsonl never mentioned
    assert refused(evaluate(base, folder), capsys, inputs=[folder]) == (
        f"error: --task t: {folder}: ambiguous validation split: this task folder holds validation.parquet "
        f"and validation.jsonl; keep one")
    # each file alone is a good split: it is the pair that is refused
    (folder / "validation.parquet").unlink()
    assert 0.0 <= score(base, folder, capsys) <= 1.0

    # any split, any two formats: --split test of a folder with test.jsonl and test.json
    jsonl(folder / "test.jsonl", ROWS)
    write(folder / "test.json", json.dumps(ROWS))
    assert refused(evaluate(base, folder, "--split", "test"), capsys, inputs=[folder]) == (
        f"error: --task t: {folder}: ambiguous test split: this task folder holds test.jsonl and test.json; keep one")
    parquet(folder / "test.parquet", {"prompt": ["1"], "answer": ["1"]})
    with pytest.raises(DataError) as err:
        load_task(folder, ("test",), source="evaluation.task_files.t")
    assert str(err.value) == (f"evaluation.task_files.t: {folder}: ambiguous test split: this task folder holds "
                              f"test.parquet, test.jsonl and test.json; keep one")


def test_an_ambiguous_split_is_refused_before_any_split_is_read(tmp_path) -> None:
    """evolve and scale read validation and test: the ambiguous test split is named before the
    (here broken) validation file is read, so the user gets the folder's problem first."""
    folder = tmp_path / "t"
    write(folder / "validation.jsonl", '{"prompt": "1"\n')
    jsonl(folder / "test.jsonl", ROWS)
    parquet(folder / "test.parquet", {"prompt": ["1"], "answer": ["1"]})
    with pytest.raises(DataError) as err:
        load_task(folder, ("validation", "test"), source="evaluation.task_files.t")
    assert str(err.value) == (f"evaluation.task_files.t: {folder}: ambiguous test split: this task folder holds "
                              f"test.parquet and test.jsonl; keep one")


# --- 2. the value rule, the same for JSONL, JSON and Parquet ---------------------------------------------
REFUSED_JSON = [
    ("NaN", "NaN instead."),
    ("Infinity", "Infinity instead."),
    ("-Infinity", "-Infinity instead."),
    ("3.10", 'the number 3.10 instead: only integers are read as text; quote it ("3.10") to keep it as written.'),
    ("1e3", 'the number 1e3 instead: only integers are read as text; quote it ("1e3") to keep it as written.'),
    ("2.0", 'the number 2.0 instead: only integers are read as text; quote it ("2.0") to keep it as written.'),
    ("true", "the boolean true instead."),
    ("[\"21\"]", "a list instead."),
    ("{\"a\": \"21\"}", "an object instead."),
]


@pytest.mark.parametrize("literal,got", REFUSED_JSON, ids=[r[0] for r in REFUSED_JSON])
def test_a_jsonl_value_that_is_not_a_string_or_integer_names_file_line_and_column(base, tmp_path, capsys,
                                                                                   literal, got) -> None:
    # line 4: a blank line counts (the line number is the editor's)
    path = write(tmp_path / "t.jsonl", '{"prompt": "12", "answer": "21"}\n\n{"prompt": "3", "answer": "3"}\n'
                                       f'{{"prompt": "45", "answer": {literal}}}\n')
    # before: NaN scored as the answer "nan", 3.10 as "3.1", 1e3 as "1000.0"
    assert refused(evaluate(base, path), capsys, inputs=[path]) == (
        f"error: {path}: line 4: `answer` must be a string (or an integer). Got {got}")
    prompt = write(tmp_path / "p.jsonl", f'{{"prompt": {literal}, "answer": "21"}}\n')
    assert refused(evaluate(base, prompt), capsys) == (
        f"error: {prompt}: line 1: `prompt` must be a string (or an integer). Got {got}")
    # a JSON array (.json) is held to the same rule, its rows numbered from 1
    array = write(tmp_path / "a.json", f'[{{"prompt": "12", "answer": "21"}},\n {{"prompt": "4", "answer": {literal}}}]')
    assert refused(evaluate(base, array), capsys) == (
        f"error: {array}: row 2: `answer` must be a string (or an integer). Got {got}")


def test_null_is_still_refused_as_null(tmp_path) -> None:
    path = write(tmp_path / "t.jsonl", '{"prompt": "12", "answer": null}\n')
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: line 1: `answer` is null$"):
        load_examples(path)


def test_integers_are_read_as_their_text_as_written(base, tmp_path, capsys) -> None:
    """An integer is lossless: scored exactly as the same digits quoted; kept as written (``-0``,
    more digits than Python's int-to-text limit, which raised a ValueError traceback)."""
    quoted = jsonl(tmp_path / "quoted.jsonl", ROWS)
    numbers = write(tmp_path / "numbers.jsonl", '{"prompt": 12, "answer": 21}\n{"prompt": "345", "answer": 543}\n'
                                                '{"prompt": 6, "answer": "6"}\n')
    assert score(base, numbers, capsys) == score(base, quoted, capsys)
    assert load_examples(numbers)["answer"] == ["21", "543", "6"]
    big = "9" * 5000
    odd = write(tmp_path / "odd.jsonl", f'{{"prompt": -0, "answer": {big}}}\n')
    ds = load_examples(odd)
    assert ds["prompt"] == ["-0"] and ds["answer"] == [big]
    # the same in a Parquet integer column: read as its decimal text, a string column of the dataset
    table = parquet(tmp_path / "ints.parquet", {"prompt": ["12", "345", "6"],
                                                "answer": pa.array([21, 543, 6], pa.int32())})
    ds = load_examples(table)
    assert ds["answer"] == ["21", "543", "6"] and ds.features["answer"].dtype == "string"
    assert score(base, table, capsys) == score(base, quoted, capsys)


@pytest.mark.parametrize("column,got", [
    (pa.array([2.5, 3.0]), "the float 2.5 instead: store the column as strings."),
    (pa.array([float("nan"), 1.0], pa.float32()), "the float nan instead: store the column as strings."),
    (pa.array([True, False]), "the boolean true instead."),
    (pa.array([["21"], ["3"]]), "a list instead."),
], ids=["float", "nan", "bool", "list"])
def test_a_parquet_value_that_is_not_a_string_or_integer_names_file_row_and_column(base, tmp_path, capsys,
                                                                                   column, got) -> None:
    path = parquet(tmp_path / "t.parquet", {"prompt": ["12", "3"], "answer": column})
    # before: 2.5 scored as "2.5", NaN as the answer "nan", True refused as "must be text. Got bool"
    assert refused(evaluate(base, path), capsys, inputs=[path]) == (
        f"error: {path}: row 1: `answer` must be a string (or an integer). Got {got}")


def test_a_parquet_null_is_refused_as_null(tmp_path) -> None:
    path = parquet(tmp_path / "t.parquet", {"prompt": ["12", "3"], "answer": pa.array(["21", None])})
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: row 2: `answer` is null$"):
        load_examples(path)


# --- 3. the formats the messages list are the formats read -----------------------------------------------
def test_messages_list_every_accepted_format_and_each_is_read(base, tmp_path, capsys) -> None:
    assert TASK_EXTENSIONS == (".parquet", ".jsonl", ".json")
    csv = write(tmp_path / "t.csv", "prompt,answer\n12,21\n")
    # before: "(use .jsonl or .parquet)", though .json is read too
    assert refused(evaluate(base, csv), capsys) == (
        f"error: {csv}: unsupported task file type '.csv' (use .parquet, .jsonl or .json)")
    folder = tmp_path / "f"
    jsonl(folder / "train.jsonl", ROWS)
    # before: "no validation.parquet or validation.jsonl in this task folder"
    assert refused(evaluate(base, folder), capsys) == (
        f"error: --task t: {folder}: no validation.parquet, validation.jsonl or validation.json in this task folder")
    one = jsonl(tmp_path / "one.jsonl", ROWS)
    # before: "... needs a task folder holding test.jsonl or test.parquet"
    assert refused(evaluate(base, one, "--split", "test"), capsys) == (
        f"error: --task t: {one}: a single task file is the validation split; the test split needs a task folder "
        f"holding test.parquet, test.jsonl or test.json")
    (tmp_path / "v.jsonl").mkdir()
    with pytest.raises(DataError) as err:
        load_examples(tmp_path / "v.jsonl")
    assert str(err.value) == (f"{tmp_path / 'v.jsonl'}: is a folder, not a task file "
                              f"(a .parquet, .jsonl or .json file of prompt/answer rows)")
    # every format listed is read, as the validation split of a task folder, to the same score
    scores = []
    for ext in TASK_EXTENSIONS:
        split = tmp_path / ext.strip(".") / f"validation{ext}"
        if ext == ".parquet":
            parquet(split, {"prompt": [r["prompt"] for r in ROWS], "answer": [r["answer"] for r in ROWS]})
        elif ext == ".json":
            write(split, json.dumps(ROWS))
        else:
            jsonl(split, ROWS)
        scores.append(score(base, split.parent, capsys))
    assert len(set(scores)) == 1, scores


# --- 4. invalid JSON names the line and the column in it ------------------------------------------------
def test_invalid_json_names_the_line_and_jsons_message_at_its_column(base, tmp_path, capsys) -> None:
    good = '{"prompt": "12", "answer": "21"}'
    unclosed = write(tmp_path / "unclosed.jsonl", f'{good}\n{good[:-1]}\n{good}\n')
    # before: "line 2: not valid JSON (Expecting ',' delimiter at column 1)"
    assert refused(evaluate(base, unclosed), capsys, inputs=[unclosed]) == (
        f"error: {unclosed}: line 2: not valid JSON: Expecting ',' delimiter at the end of the line (column 32)")
    # a comma left out in the middle: the column of `"answer"`, also in a file saved with CRLF
    comma = write(tmp_path / "comma.jsonl", f'{good}\r\n{{"prompt": "12" "answer": "21"}}\r\n')
    assert refused(evaluate(base, comma), capsys) == (
        f"error: {comma}: line 2: not valid JSON: Expecting ',' delimiter at column 17")
    # a JSON array names its line and column
    array = write(tmp_path / "a.json", f'[{good},\n {good[:-1]}\n]')
    assert refused(evaluate(base, array), capsys) == (
        f"error: {array}: not valid JSON: Expecting ',' delimiter at line 3, column 1")
    # nesting past Python's recursion limit is one error line, not a RecursionError traceback
    deep = write(tmp_path / "deep.jsonl", f"{good}\n" + "[" * 100_000 + "\n")
    assert refused(evaluate(base, deep), capsys) == f"error: {deep}: line 2: JSON nested too deeply to read"
