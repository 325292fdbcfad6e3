"""``evomerge evaluate`` scores full fine-tunes as well as peft adapters: a full checkpoint (a zoo
``full/*`` expert, or what ``evomerge merge --format full`` writes) is read as its task vector
against the base, through the pool loader ``evomerge merge`` uses, and scores as the checkpoint
itself loaded as the model."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from evomerge.cli import main
from evomerge.io import sha256_tree

TASKS = ["brackets", "majority"]


def test_full_checkpoints_score_as_the_checkpoint_itself(small_zoo, tmp_path, capsys) -> None:
    from evomerge.evaluation import Evaluator

    merged = tmp_path / "merged" / "full"
    full = tmp_path / "brackets"  # the zoo's full expert, with the base's tokenizer to load it on its own below
    shutil.copytree(small_zoo.full_dirs["brackets"], full)
    for f in small_zoo.base_dir.glob("tokenizer*.json"):
        shutil.copy(f, full / f.name)
    assert main(["merge", "-e", str(full), "-e", str(small_zoo.full_dirs["majority"]), "--base", str(small_zoo.base_dir),
                 "--format", "full", "-q", "--out", str(merged)]) == 0
    before = {p: sha256_tree(p) for p in (merged, full)}
    table = tmp_path / "scores.parquet"
    capsys.readouterr()
    code = main(["evaluate", "--small", "-e", str(merged), "-e", str(full), "-e", str(small_zoo.expert_dirs["majority"]),
                 "--tasks", ",".join(TASKS), "--max-samples", "24", "--out", str(table)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert [line.split()[0] for line in out.splitlines()[2:5]] == ["base", "full", "brackets"]
    rows = pq.read_table(table).to_pylist()
    score = {(r["candidate"], r["task"]): r["value"] for r in rows if r["metric"] == "token_accuracy"}
    for name, folder in (("full", merged), ("brackets", full)):
        own = Evaluator(folder, small_zoo.load_tasks(TASKS), max_samples=24).evaluate({})
        for t in TASKS:
            assert score[(name, t)] == pytest.approx(own.per_task[t], abs=0.01), (name, t)
    assert score[("brackets", "brackets")] > score[("base", "brackets")] + 0.05  # the fine-tune is scored, not the base
    assert {p: sha256_tree(p) for p in (merged, full)} == before


def test_full_checkpoint_of_another_base_is_refused_before_the_model_loads(small_zoo, tmp_path, capsys) -> None:
    other = tmp_path / "other"
    shutil.copytree(small_zoo.full_dirs["brackets"], other)
    config = json.loads((other / "config.json").read_text())
    config["num_hidden_layers"] += 1
    (other / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    code = main(["evaluate", "--small", "-e", str(other), "--max-samples", "4"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"error: {other / 'config.json'}: `num_hidden_layers` is"), lines[0]
    assert "a fine-tune of a different base model?" in lines[0]


def test_a_folder_that_is_no_expert_is_named(tmp_path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    capsys.readouterr()
    assert main(["evaluate", "--small", "-e", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {tmp_path / 'empty'}: neither a peft adapter (adapter_config.json) nor a checkpoint "
                   "(model.safetensors[.index.json])"), err
