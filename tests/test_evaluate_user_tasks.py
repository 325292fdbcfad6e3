"""``evomerge evaluate`` with the user's own base and task files (``--base``, ``--task``).

* A single task file is the validation split: ``--split test`` of it is refused, not relabelled.
* Task-file errors name the file and its line (1-based, blank lines counted; ``row N`` of a
  Parquet table), a tokenizer without EOS names the base folder, a folder where a file belongs
  says it is a folder.

Real files throughout: tiny task files in ``tmp_path``, the small zoo's base model and experts.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evomerge.io import sha256_tree
from tests._cli_helpers import one_error, run_cli

GOOD = [{"prompt": "12", "answer": "21"}, {"prompt": "345", "answer": "543"}, {"prompt": "6", "answer": "6"}]


def jsonl(path: Path, rows) -> Path:
    """Rows as JSON Lines; a row given as a string is written as it is (e.g. a blank line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def refused(args, capsys, match: str, inputs=()) -> str:
    """One ``error:`` line matching ``match``, exit 2, nothing scored, the inputs unchanged."""
    before = {str(p): sha256_tree(p) for p in inputs}
    line = one_error(args, capsys)
    assert re.search(match, line), line
    assert {str(p): sha256_tree(p) for p in inputs} == before
    return line


@pytest.fixture(scope="module")
def base(small_zoo) -> Path:
    return small_zoo.base_dir


# --- 3. a single file is the validation split --------------------------------------------------------------
def test_a_single_file_is_the_validation_split(base, tmp_path, capsys) -> None:
    folder = tmp_path / "t"
    val = jsonl(folder / "validation.jsonl", GOOD)
    test = jsonl(folder / "test.jsonl", [{"prompt": "1", "answer": "9"}, {"prompt": "23", "answer": "99"}])
    common = ["evaluate", "--base", base, "--max-samples", "5"]
    # before: "token_accuracy on test" printed with validation.jsonl's score
    refused([*common, "--task", f"t={val}", "--split", "test"], capsys,
            rf"^error: --task t: {re.escape(str(val))}: a single task file is the validation split; the test split "
            r"needs a task folder holding test\.jsonl or test\.parquet$", inputs=[folder])
    code, out, err = run_cli([*common, "--task", f"t={folder}", "--split", "test"], capsys)
    assert code == 0, err
    assert out.splitlines()[0].startswith("token_accuracy on test")
    on_test = float(out.splitlines()[2].split()[1])
    # the folder's test split scores what test.jsonl scores as a single (validation) file
    alone = shutil.copy(test, tmp_path / "heldout.jsonl")
    code, out, err = run_cli([*common, "--task", f"t={alone}"], capsys)
    assert code == 0 and out.splitlines()[0].startswith("token_accuracy on validation"), err
    assert float(out.splitlines()[2].split()[1]) == on_test
    code, out, err = run_cli([*common, "--task", f"t={val}"], capsys)
    assert code == 0 and float(out.splitlines()[2].split()[1]) != on_test, err


# --- 4. task-file errors: the file, its line, the base folder ----------------------------------------------
def test_vocabulary_and_length_errors_name_the_file_and_its_line(base, tmp_path, capsys) -> None:
    n_pos = json.loads((base / "config.json").read_text())["max_position_embeddings"]
    # a blank line before the bad example: line 4 of the file is its 3rd example
    oov = jsonl(tmp_path / "oov.jsonl", [GOOD[0], "", GOOD[1], {"prompt": "12", "answer": "\u20ac"}])
    # before: "task `t` split `validation`: row 2: ..."
    refused(["evaluate", "--base", base, "--task", f"t={oov}", "--max-samples", "5"], capsys,
            rf"^error: {re.escape(str(oov))} \(task `t`\): line 4: the answer holds characters outside the "
            r"tokenizer's vocabulary \('€'\)", inputs=[oov])
    long = jsonl(tmp_path / "long.jsonl", ["", GOOD[0], {"prompt": "1" * (4 * n_pos), "answer": "1"}])
    refused(["evaluate", "--base", base, "--task", f"t={long}", "--max-samples", "5"], capsys,
            rf"^error: {re.escape(str(long))} \(task `t`\): line 3 is \d+ tokens .*context of {n_pos} positions",
            inputs=[long])
    table = tmp_path / "oov.parquet"
    pq.write_table(pa.table({"prompt": ["12", "1\u20ac"], "answer": ["21", "1"]}), table)
    refused(["evaluate", "--base", base, "--task", f"t={table}", "--max-samples", "5"], capsys,
            rf"^error: {re.escape(str(table))} \(task `t`\): row 2: the prompt holds characters", inputs=[table])


def test_merge_data_errors_count_lines_of_the_file(small_zoo, base, tmp_path, capsys) -> None:
    oov = jsonl(tmp_path / "d.jsonl", [GOOD[0], "", {"prompt": "1\u20ac", "answer": "1"}])
    experts = [a for n in ("brackets", "majority") for a in ("-e", small_zoo.expert_dirs[n])]
    # before: "d.jsonl (merge.data): row 1: ..." (0-based, blank line not counted)
    refused(["merge", "-q", *experts, "--base", base, "--method", "regmean", "--rank", "4", "--data", oov,
             "--out", tmp_path / "o"], capsys, r"d\.jsonl \(merge\.data\): line 3: the prompt holds characters",
            inputs=[oov])
    assert not (tmp_path / "o").exists()


def test_a_tokenizer_without_eos_is_blamed_on_the_base_folder(base, tmp_path, capsys) -> None:
    noeos = Path(shutil.copytree(base, tmp_path / "noeos"))
    tok_cfg = json.loads((noeos / "tokenizer_config.json").read_text())
    tok_cfg.pop("eos_token")
    (noeos / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    task = jsonl(tmp_path / "t.jsonl", GOOD)
    # before: "task `t` split `validation`: the tokenizer has no eos_token ..."
    refused(["evaluate", "--base", noeos, "--task", f"t={task}", "--max-samples", "2"], capsys,
            rf"^error: {re.escape(str(noeos))}: the tokenizer has no eos_token; evomerge needs one to end answers",
            inputs=[noeos, task])


def test_a_folder_where_a_task_file_belongs_says_it_is_a_folder(base, tmp_path, capsys) -> None:
    from evomerge.errors import DataError
    from evomerge.evaluation.task_data import load_examples

    folder = tmp_path / "t"
    (folder / "validation.jsonl").mkdir(parents=True)
    # before: "no validation.parquet or validation.jsonl in this task folder" (a folder there was not seen)
    refused(["evaluate", "--base", base, "--task", f"t={folder}", "--max-samples", "2"], capsys,
            rf"^error: {re.escape(str(folder / 'validation.jsonl'))}: is a folder, not a task file")
    # before: "task file not found (it is a folder)"
    with pytest.raises(DataError, match=rf"^{re.escape(str(folder))}: is a folder, not a task file"):
        load_examples(folder)
    with pytest.raises(DataError, match=r"nope\.jsonl: task file not found$"):
        load_examples(tmp_path / "nope.jsonl")

