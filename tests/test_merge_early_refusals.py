"""`evomerge merge` refuses what it can tell from headers and the config before it reads any
tensor value (the NaN/inf scan of every expert, the pool statistics): each expert pool here holds
a real expert whose values fail that scan, so a refusal that comes after the scan would name the
NaN instead of the conflict."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from _cli_helpers import one_error
from evomerge.errors import ExpertLoadError
from evomerge.experts.pool import load_pool
from test_experts_fixtures import copy_with_nan, make_base, make_full, make_lora

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("early")
    make_base(root / "base")
    make_full(root / "base", root / "f1", seed=1)
    make_full(root / "base", root / "f2", seed=2)
    make_lora(root / "base", root / "l1", seed=1)
    make_lora(root / "base", root / "l2", seed=2)
    keys = {"fnan": copy_with_nan(root / "f2", root / "fnan", "model.safetensors"),
            "lnan": copy_with_nan(root / "l2", root / "lnan", "adapter_model.safetensors")}
    (root / "d.jsonl").write_text(json.dumps({"prompt": "12", "answer": "21"}) + "\n")
    (root / "keys.json").write_text(json.dumps(keys))
    return root


def _refused(zoo, tmp_path, capsys, args, pattern):
    """``merge ARGS --out O`` is one error matching ``pattern``; no output, inputs unchanged."""
    before = {p: p.stat().st_mtime_ns for p in zoo.rglob("*") if p.is_file()}
    line = one_error(["merge", "-q", *args, "--out", tmp_path / "o"], capsys)
    assert re.search(pattern, line), line
    assert not (tmp_path / "o").exists()
    assert {p: p.stat().st_mtime_ns for p in zoo.rglob("*") if p.is_file()} == before
    return line


FULL_CONFLICTS = [  # (flags, the refusal), each decided by headers and the config alone
    (["--rank", "4"], r"merge\.rank \(4\) truncates .*full fine-tunes.*drop --rank"),
    (["--format", "peft"], r"output_format `peft` needs LoRA experts"),
    (["--space", "ab"], r"merge\.space `ab` applies to LoRA experts"),
    (["--method", "regmean"], r"merge\.data: this merge method needs data statistics \(gram\).*`f1`, `fnan`"),
    (["--method", "fisher", "--data", "{d}", "--data", "{d}", "--data", "{d}"],
     r"merge\.data: give one task file per expert \(2\) or one shared file; got 3"),
    (["--method", "regmean", "--data", "{missing}"], r"missing\.jsonl: merge\.data task file not found"),
]


@pytest.mark.parametrize("flags,pattern", FULL_CONFLICTS, ids=[" ".join(f[:2]) for f, _ in FULL_CONFLICTS])
def test_full_fine_tune_conflicts_come_before_the_value_scan(zoo, tmp_path, capsys, flags, pattern):
    flags = [f.format(d=zoo / "d.jsonl", missing=tmp_path / "missing.jsonl") for f in flags]
    line = _refused(zoo, tmp_path, capsys, ["--base", zoo / "base", "-e", zoo / "f1", "-e", zoo / "fnan", *flags],
                    pattern)
    assert "NaN" not in line


def test_emr_task_names_come_before_the_value_scan(zoo, tmp_path, capsys):
    cfg = tmp_path / "emr.yaml"
    cfg.write_text(json.dumps({"experts": {"base": str(zoo / "base"), "experts": [
        {"path": str(zoo / "f1"), "task": "t"}, {"path": str(zoo / "fnan"), "task": "t"}]},
        "merge": {"method": "emr"}}))
    _refused(zoo, tmp_path, capsys, ["--config", cfg], r"EMR needs one distinct task per expert; got tasks \['t', 't'\]")


def test_lora_conflicts_come_before_the_value_scan(zoo, tmp_path, capsys):
    pair = ["-e", zoo / "l1", "-e", zoo / "lnan"]
    _refused(zoo, tmp_path, capsys, [*pair, "--space", "ab", "--rank", "4"],
             r"merge\.rank \(4\) truncates a dense delta, but merge\.space `ab`")
    _refused(zoo, tmp_path, capsys, pair, r"merge\.space `delta` without --rank writes a full checkpoint, which needs --base")
    _refused(zoo, tmp_path, capsys, [*pair, "--method", "fisher", "--rank", "4"], r"merge\.data: this merge method needs")


def test_the_scan_still_refuses_the_nan_once_nothing_else_is_wrong(zoo, tmp_path, capsys):
    keys = json.loads((zoo / "keys.json").read_text())
    _refused(zoo, tmp_path, capsys, ["--base", zoo / "base", "-e", zoo / "f1", "-e", zoo / "fnan"],
             rf"fnan/model\.safetensors: tensor `{keys['fnan']}` contains NaN values")
    _refused(zoo, tmp_path, capsys, ["-e", zoo / "l1", "-e", zoo / "lnan", "--rank", "4"],
             rf"lnan/adapter_model\.safetensors: tensor `{keys['lnan']}` contains NaN values")


@pytest.mark.parametrize("kind", ["f", "l"])
def test_load_pool_without_values_reads_headers_only(zoo, kind):
    """``values=False`` checks kinds, shapes and base without the value scan; ``check_values`` scans."""
    paths = [zoo / f"{kind}1", zoo / f"{kind}nan"]
    pool = load_pool(paths, base=zoo / "base", values=False)
    assert pool.kind == {"f": "full", "l": "lora"}[kind] and pool.duplicates == []
    with pytest.raises(ExpertLoadError, match=rf"{kind}nan/\w+\.safetensors: tensor `.*` contains NaN"):
        pool.check_values()
    with pytest.raises(ExpertLoadError, match="contains NaN"):
        load_pool(paths, base=zoo / "base")


def test_check_values_finds_duplicates_as_load_pool_did(zoo, tmp_path, capsys):
    shutil.copytree(zoo / "f1", tmp_path / "copy")
    pool = load_pool([zoo / "f1", tmp_path / "copy", zoo / "f2"], base=zoo / "base", values=False)
    capsys.readouterr()
    pool.check_values()
    assert pool.duplicates == [(0, 1)]
    assert "warning: experts `f1`" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "emr"])
def test_data_for_a_method_that_reads_none_is_refused(zoo, tmp_path, capsys, method):
    """``--data`` is read only by the methods with statistics; with any other it would be checked,
    recorded in the manifest and never used, so it is refused (as ``--rank`` is where nothing has a rank)."""
    rank = [] if method == "emr" else ["--rank", "4"]
    _refused(zoo, tmp_path, capsys, ["-e", zoo / "l1", "-e", zoo / "l2", "--method", method, *rank,
                                     "--data", zoo / "d.jsonl"],
             rf"^error: merge\.data: merge method `{method}` takes no data \(only fisher, regmean read task files\); "
             r"drop --data")
    cfg = tmp_path / "m.yaml"
    cfg.write_text(json.dumps({"merge": {"method": method, "data": [str(zoo / "d.jsonl")]}}))
    _refused(zoo, tmp_path, capsys, ["--config", cfg, "-e", zoo / "l1", "-e", zoo / "l2", *rank],
             rf"merge\.data: merge method `{method}` takes no data")


def test_a_base_tokenizer_without_eos_comes_before_the_value_scan(zoo, tmp_path, capsys):
    """RegMean's data is encoded with the base's tokenizer before any expert value is read: a base
    without EOS is named, not the NaN of `fnan` (a guard of the order encode_dataset gives)."""
    noeos = Path(shutil.copytree(zoo / "base", tmp_path / "noeos"))
    tok_cfg = json.loads((noeos / "tokenizer_config.json").read_text())
    tok_cfg.pop("eos_token", None)
    (noeos / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    _refused(zoo, tmp_path, capsys, ["--base", noeos, "-e", zoo / "f1", "-e", zoo / "fnan", "--method", "regmean",
                                     "--data", zoo / "d.jsonl"], rf"^error: {re.escape(str(noeos))}: the tokenizer has no eos_token")
