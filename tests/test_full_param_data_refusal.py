"""Fisher / RegMean with no task data for an expert: refused with the key and the expert named, before
any statistics are computed, on every path that computes them (merge, the full-parameter table; the
scale driver's check is ``tests/test_scale_order.py::test_fisher_regmean_need_a_train_split_per_expert``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from evomerge.cli import main
from evomerge.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import full_param_table  # noqa: E402
from test_experts_fixtures import make_base, make_lora  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("statsdata")
    make_base(root / "base")
    for i in (1, 2, 3):
        make_lora(root / "base", root / f"l{i}", seed=i, r=4, alpha=8)
    (root / "d1.jsonl").write_text(json.dumps({"prompt": "ab=", "answer": "ba"}) + "\n")
    return root


def _merge(zoo, tmp_path, capsys, method, data):
    capsys.readouterr()
    out = tmp_path / "out"
    args = ["merge", "--quiet", *[a for i in (1, 2, 3) for a in ("-e", str(zoo / f"l{i}"))], "--base", str(zoo / "base"),
            "--method", method, "--rank", "4", *[a for d in data for a in ("--data", str(d))], "--out", str(out)]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert not out.exists()
    return err


@pytest.mark.parametrize("method", ["fisher", "regmean"])
def test_merge_without_task_data_names_the_key_and_every_expert(zoo, tmp_path, capsys, method):
    err = _merge(zoo, tmp_path, capsys, method, [])
    assert err.startswith("error: ") and "merge.data" in err
    assert all(f"`l{i}`" in err for i in (1, 2, 3)), err


def test_merge_with_too_few_task_files_names_the_expert_without_one(zoo, tmp_path, capsys):
    err = _merge(zoo, tmp_path, capsys, "regmean", [zoo / "d1.jsonl", zoo / "d1.jsonl"])
    assert "merge.data" in err and "no task file for expert `l3`" in err, err
    assert "`l1`" not in err and "`l2`" not in err


def test_merge_with_a_missing_task_file_names_its_expert(zoo, tmp_path, capsys):
    err = _merge(zoo, tmp_path, capsys, "fisher", [zoo / "d1.jsonl", zoo / "nope.jsonl", zoo / "d1.jsonl"])
    assert "nope.jsonl: merge.data task file not found (expert `l2`)" in err, err


def test_full_param_table_refuses_an_expert_without_a_train_split(tmp_path):
    for task in ("t1", "t2", "t3"):
        (tmp_path / "tasks" / task).mkdir(parents=True)
    for task in ("t1", "t3"):
        (tmp_path / "tasks" / task / "train.parquet").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"need task data for expert `t2` \(task 't2'\)"):
        full_param_table.train_splits(tmp_path, ["t1", "t2", "t3"])
    (tmp_path / "tasks" / "t2" / "train.parquet").write_bytes(b"x")
    assert full_param_table.train_splits(tmp_path, ["t1", "t2", "t3"]) == [
        tmp_path / "tasks" / t / "train.parquet" for t in ("t1", "t2", "t3")]
