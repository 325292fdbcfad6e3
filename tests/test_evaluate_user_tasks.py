"""``evomerge evaluate`` with the user's own base and task files (``--base``, ``--task``).

* ``--base`` (``experts.base``) scores the user's own tasks: without ``--task``
  (``evaluation.task_files``) it is refused, never replaced by the zoo's base.
* ``--tasks`` (``evaluation.tasks``) selects among the ``--task`` tasks (or the zoo's); a name
  that is not there is refused naming the tasks there are.
* A single task file is the validation split: ``--split test`` of it is refused, not relabelled,
  and a single file named ``test.jsonl`` (or ``train``) is refused rather than read as validation.
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
from _cli_helpers import one_error, run_cli

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


# --- 1. --base needs --task ------------------------------------------------------------------------------
def test_base_without_tasks_is_refused_not_replaced_by_the_zoo(small_zoo, base, tmp_path, capsys) -> None:
    # before: exit 0 scoring the shipped zoo's base and experts under the label "base"
    line = refused(["evaluate", "--base", base, "--max-samples", "2"], capsys,
                   rf"^error: --base {re.escape(str(base))}: a base model scores your own tasks and needs them: "
                   r"give --task name=FILE\|DIR \(evaluation\.task_files\)")
    assert "drop --base" in line
    # before: an error naming the zoo's base as --base, which the user never passed
    expert = small_zoo.expert_dirs["brackets"]
    refused(["evaluate", "--base", base, "-e", expert, "--max-samples", "2"], capsys,
            r"^error: --base .*needs them: give --task")
    refused(["evaluate", "--base", base, "--small", "--max-samples", "2"], capsys, r"^error: --base .*needs them")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"experts:\n  base: {base}\n")
    refused(["evaluate", "-c", cfg, "--max-samples", "2"], capsys, rf"^error: experts\.base {re.escape(str(base))}: ")


# --- 2. --tasks selects among the user's tasks -------------------------------------------------------------
def test_tasks_selects_among_the_given_tasks(base, tmp_path, capsys) -> None:
    a, b = jsonl(tmp_path / "a.jsonl", GOOD), jsonl(tmp_path / "b.jsonl", GOOD[:2])
    table = tmp_path / "scores.parquet"
    args = ["evaluate", "--base", base, "--task", f"a={a}", "--task", f"b={b}", "--max-samples", "3"]
    code, out, err = run_cli([*args, "--tasks", "b", "--out", table], capsys)
    assert code == 0, err
    header = out.splitlines()[1].split()
    assert header == ["candidate", "b", "fitness"], out  # before: a and b
    assert set(pq.read_table(table).column("task").to_pylist()) == {"b"}
    # weights of a task left out are dropped with it (the Evaluator refuses only unknown names)
    code, out, err = run_cli([*args, "--tasks", "a", "--set", "evaluation.task_weights={a: 1, b: 3}"], capsys)
    assert code == 0 and out.splitlines()[1].split() == ["candidate", "a", "fitness"], err
    # before: exit 0 scoring both
    refused([*args, "--tasks", "a,bb"], capsys,
            r"^error: --tasks: unknown task\(s\) bb; the tasks given \(--task, evaluation\.task_files\): a, b$")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("evaluation:\n  tasks: [c]\n")
    refused([*args, "-c", cfg], capsys, r"^error: evaluation\.tasks: unknown task\(s\) c; the tasks given")


def test_tasks_typo_on_the_zoo_names_the_flag_and_the_zoos_tasks(small_zoo, capsys) -> None:
    refused(["evaluate", "--small", "--tasks", "brackets,nope", "--max-samples", "2"], capsys,
            rf"^error: --tasks: unknown task\(s\) nope; the tasks of the zoo .*: {', '.join(small_zoo.tasks)}$")


# --- 3. a single file is the validation split --------------------------------------------------------------
def test_a_single_file_is_the_validation_split(base, tmp_path, capsys) -> None:
    folder = tmp_path / "t"
    val = jsonl(folder / "validation.jsonl", GOOD)
    test = jsonl(folder / "test.jsonl", [{"prompt": "1", "answer": "9"}, {"prompt": "23", "answer": "99"}])
    common = ["evaluate", "--base", base, "--max-samples", "5"]
    # before: "token_accuracy on test" printed with validation.jsonl's score
    refused([*common, "--task", f"t={val}", "--split", "test"], capsys,
            rf"^error: --task t: {re.escape(str(val))}: a single task file is the validation split; the test split "
            r"needs a task folder holding test\.parquet, test\.jsonl or test\.json$", inputs=[folder])
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


def test_a_single_file_named_test_is_not_read_as_validation(base, tmp_path, capsys) -> None:
    """``test.jsonl`` alone was scored under the label validation (and would drive a run's choices)."""
    test = jsonl(tmp_path / "t" / "test.jsonl", GOOD)
    for split in ("validation", "test"):
        refused(["evaluate", "--base", base, "--task", f"t={test}", "--split", split, "--max-samples", "5"], capsys,
                rf"^error: --task t: {re.escape(str(test))}: a single task file is read as the validation split, "
                r"where every choice is made, but this one is named as the test split; give the task folder",
                inputs=[test.parent])
    code, out, err = run_cli(["evaluate", "--base", base, "--task", f"t={test.parent}", "--split", "test",
                              "--max-samples", "5"], capsys)
    assert code == 0 and out.splitlines()[0].startswith("token_accuracy on test"), err


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



def test_config_experts_are_scored_under_their_names(small_zoo, base, tmp_path, capsys) -> None:
    """``-c`` with ``experts.experts`` and no ``--expert``: those experts are the candidates, named
    by their ``name`` (before: only the base was scored); ``--expert`` replaces them; two with
    one name are refused naming the entry."""
    import yaml

    task = jsonl(tmp_path / "t.jsonl", GOOD)
    d = small_zoo.expert_dirs
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"experts": {"base": str(base), "experts": [
        {"path": str(d["brackets"]), "name": "one"}, {"path": str(d["majority"])}]},
        "evaluation": {"task_files": {"t": str(task)}, "max_samples": 3}}))
    code, out, err = run_cli(["evaluate", "-c", cfg], capsys)
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["base", "one", "majority"], out
    code, out, err = run_cli(["evaluate", "-c", cfg, "-e", d["brackets"]], capsys)
    assert code == 0 and [line.split()[0] for line in out.splitlines()[2:]] == ["base", "brackets"], out
    cfg.write_text(yaml.safe_dump({"experts": {"base": str(base), "experts": [
        {"path": str(d["brackets"]), "name": "x"}, {"path": str(d["majority"]), "name": "x"}]},
        "evaluation": {"task_files": {"t": str(task)}}}))
    refused(["evaluate", "-c", cfg], capsys,
            r"^error: experts\.experts\[1\] \(.*majority\): a candidate named `x` is already given; give it another `name`$")
