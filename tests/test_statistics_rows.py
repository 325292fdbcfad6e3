"""Fisher / RegMean statistics read ``merge.data`` rows as the evaluator does: a row is named
``line N`` of its JSONL file (``row N`` from 1 otherwise), a tokenizer without EOS is blamed on
the base folder, and ``--data`` naming a folder says so. The counts of task files are checked by
one function, before the pool's values are read and again by the statistics."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from _cli_helpers import one_error
from evomerge.errors import ConfigError, DataError


def _tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def test_rows_are_named_by_their_line_and_eos_is_the_bases(small_zoo, tmp_path) -> None:
    from evomerge.evaluation.encoding import row_names
    from evomerge.evaluation.task_data import LINE_COLUMN, load_examples
    from evomerge.experts.statistics import encode_examples

    path = tmp_path / "t.jsonl"  # line 2 blank: the rows are lines 1 and 3 of the file
    path.write_text(json.dumps({"prompt": "12", "answer": "21"}) + "\n\n" + json.dumps({"prompt": "3", "answer": "1"}) + "\n")
    rows = load_examples(path)
    assert row_names(rows) == row_names(list(rows)) == ["line 1", "line 3"]
    assert row_names([{"prompt": "1", "answer": "1"}, {"prompt": "2", "answer": "2"}]) == ["row 1", "row 2"]
    assert row_names([{"prompt": "1", "answer": "1", LINE_COLUMN: 4}]) == ["line 4"]
    array = tmp_path / "t.json"  # a JSON array: rows numbered as a table's, from 1
    array.write_text(json.dumps([{"prompt": "12", "answer": "21"}, {"prompt": "3", "answer": "1"}]))
    assert row_names(load_examples(array)) == ["row 1", "row 2"]
    noeos = Path(shutil.copytree(small_zoo.base_dir, tmp_path / "noeos"))
    cfg = json.loads((noeos / "tokenizer_config.json").read_text())
    cfg.pop("eos_token")
    (noeos / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(DataError, match=rf"^{re.escape(str(noeos))}: the tokenizer has no eos_token"):
        encode_examples(_tokenizer(noeos), rows)


def test_data_file_counts_are_one_check(small_zoo, tmp_path) -> None:
    from evomerge.experts.statistics import check_data_files

    with pytest.raises(ConfigError, match=r"needs data statistics \(fisher\) and no expert has task data"):
        check_data_files({"fisher"}, ["a", "b"], [])
    with pytest.raises(ConfigError, match=r"got 2: no task file for expert `c`"):
        check_data_files({"gram"}, ["a", "b", "c"], ["x", "y"])
    with pytest.raises(ConfigError, match=r"got 3: 1 more than the experts"):
        check_data_files({"gram"}, ["a", "b"], ["x", "y", "z"])
    check_data_files({"gram"}, ["a", "b"], ["x"])  # one shared file
    check_data_files({"gram"}, ["a", "b"], ["x", "y"])


def test_merge_data_naming_a_folder_says_it_is_a_folder(small_zoo, tmp_path, capsys) -> None:
    folder = tmp_path / "rev"
    folder.mkdir()
    line = one_error(["merge", "-e", small_zoo.expert_dirs["brackets"], "-e", small_zoo.expert_dirs["majority"],
                      "--base", small_zoo.base_dir, "--method", "regmean", "--data", folder, "--rank", "4",
                      "--out", tmp_path / "o"], capsys)
    assert line == f"error: {folder}: merge.data is a folder, not a task file", line
    assert not (tmp_path / "o").exists()

