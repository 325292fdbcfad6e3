"""``evomerge evaluate`` refusals that say what to do, on the shipped small zoo's real files:

* ``--split`` other than validation or test is refused before the zoo's model loads;
* two ``--expert`` folders of one name are refused pointing at the config's ``{path, name}``
  entries (not at renaming a folder of the installed package), and that config scores both;
* an EMR merge output given as an expert is named as one, with the way to score it
  (``load_emr_task`` per task, as ``PerTask``), and that way works.
"""

from __future__ import annotations

import json

import pytest
import yaml

from _cli_helpers import one_error, run_cli


def test_an_unknown_split_is_refused_before_the_model_loads(tmp_path, monkeypatch, capsys) -> None:
    """Before: the model loaded (a progress bar), then "task `rev_digits` has no split `tests`". Now
    the split is the first thing checked: a config that is refused when read, an --expert that is
    not there, and a zoo that fails when opened are not reached."""
    from evomerge.cli import _common

    def no_zoo(*a, **kw):
        raise AssertionError("the zoo was opened")

    monkeypatch.setattr(_common, "open_zoo", no_zoo)
    broken = tmp_path / "broken.yaml"
    broken.write_text("evaluation: {metric: no_such_metric}\n")
    args = ["evaluate", "--small", "-c", broken, "-e", tmp_path / "absent", "--max-samples", "5"]
    # with a split evaluate scores, each is refused when reached: the check below has teeth
    assert "no_such_metric" in one_error([*args, "--split", "validation"], capsys)
    assert "absent: expert not found" in one_error([*args[:2], *args[4:], "--split", "test"], capsys)
    line = one_error([*args, "--split", "tests"], capsys)
    assert line == "error: --split tests: not a split evaluate scores; use validation or test"


def test_two_experts_of_one_name_are_named_through_the_config(small_zoo, tmp_path, capsys) -> None:
    full, lora = small_zoo.full_dirs["brackets"], small_zoo.expert_dirs["brackets"]
    line = one_error(["evaluate", "--small", "-e", full, "-e", lora, "--max-samples", "4"], capsys)
    assert line.startswith(f"error: --expert {lora}: a candidate named `brackets` is already given; "), line
    assert "rename the folder" not in line  # the folder lies inside the installed package
    assert "`experts: {experts: [{path: DIR, name: NAME}, ...]}`" in line and "-c and no --expert" in line
    # the way the line gives works
    cfg = tmp_path / "names.yaml"
    cfg.write_text(yaml.safe_dump({"experts": {"experts": [{"path": str(full), "name": "full_brackets"},
                                                           {"path": str(lora), "name": "lora_brackets"}]}}))
    code, out, err = run_cli(["evaluate", "--small", "-c", cfg, "--tasks", "brackets", "--max-samples", "4"], capsys)
    assert code == 0, err
    assert [row.split()[0] for row in out.splitlines()[2:]] == ["base", "full_brackets", "lora_brackets"], out


def test_an_emr_output_is_named_and_scored_per_task(small_zoo, tmp_path, capsys) -> None:
    from evomerge.evaluation import Evaluator, PerTask
    from evomerge.pipelines.merge.job import load_emr_task

    emr = tmp_path / "emr"
    code, _, err = run_cli(["merge", "-q", "-e", small_zoo.expert_dirs["brackets"], "-e",
                            small_zoo.expert_dirs["majority"], "--method", "emr", "--out", emr], capsys)
    assert code == 0, err
    # before: "neither a peft adapter (adapter_config.json) nor a checkpoint"
    line = one_error(["evaluate", "--small", "-e", emr, "--max-samples", "4"], capsys)
    assert line.startswith(f"error: {emr}: an EMR merge output (emr_tasks.json"), line
    assert f"load_emr_task('{emr}', TASK)" in line and "PerTask(" in line and "docs/zoo.md" in line
    # what it (and docs/zoo.md) says to do: each task scored with its own vector
    tasks = json.loads((emr / "emr_tasks.json").read_text())["tasks"]
    assert tasks == ["brackets", "majority"]
    ev = Evaluator.from_zoo(small_zoo, tasks=tasks, max_samples=16)
    per_task = ev.evaluate(PerTask({t: load_emr_task(emr, t) for t in tasks}))
    base = ev.evaluate({})
    assert per_task.per_task["brackets"] > base.per_task["brackets"]  # the merge is scored, not the base
    assert per_task.per_task != pytest.approx(base.per_task)
