"""Outputs that overlap inputs, options that would be silently ignored and task data that would be
misread are refused before any work, with one line naming the output and the input (or the file).

* ``analyze``/``evaluate``/``merge`` refuse an ``--out`` that is, contains or lies in an input:
  an expert, the base, a task/data file, a zoo read as input (``evomerge.io.check_not_overlapping``,
  one check for the three commands); an input inside a zoo makes the whole zoo an input.
* ``merge --rank`` with full fine-tunes (or ``--format full``) is refused; the manifest records the
  rank the adapter really has (``--rank`` capped by the matrix size).
* ``merge.data`` rows are checked with the base tokenizer as ``evaluate --task`` checks them.
* ``evaluate`` reads a LoRA expert against the base like the pool loader (an adapter of another
  base is refused naming its file, before the model is loaded).
* ``--base FILE`` says it is a file.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_bad_inputs import bad, jsonl  # noqa: E402

from evomerge.cli import main  # noqa: E402
from evomerge.io import sha256_tree  # noqa: E402


@pytest.fixture(scope="module")
def zoo(small_zoo):
    return small_zoo


@pytest.fixture
def pair(zoo, tmp_path):
    """Two LoRA experts copied out of the small zoo (so a failing test cannot damage the zoo)."""
    for name, src in (("A", "brackets"), ("B", "majority")):
        shutil.copytree(zoo.expert_dirs[src], tmp_path / name)
    return tmp_path / "A", tmp_path / "B"


@pytest.fixture
def zoo_copy(zoo, tmp_path):
    """The small zoo copied into ``tmp_path/zoo`` (an output written into it by a bug lands there)."""
    shutil.copytree(zoo.root, tmp_path / "zoo")
    return tmp_path / "zoo"


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- 1. an output that overlaps an input ------------------------------------------------------------
def test_analyze_refuses_an_output_that_overlaps_an_expert(pair, capsys) -> None:
    a, b = pair
    bad(capsys, ["analyze", "-q", "-e", a, "-e", b, "--out", a, "--overwrite"],
        rf"^error: {a}: the output overlaps the input {a}; inputs are never written", inputs=[a, b])
    assert (a / "adapter_model.safetensors").is_file()
    bad(capsys, ["analyze", "-q", "-e", a, "-e", b, "--out", a / "sub"],
        rf"{a}/sub: the output overlaps the input {a}", out=a / "sub", inputs=[a, b])
    bad(capsys, ["analyze", "-q", "-e", a, "-e", b, "--out", a.parent, "--overwrite"],  # around an input
        r"the output overlaps the input", inputs=[a, b])


def test_evaluate_refuses_an_output_that_overlaps_an_input(zoo, pair, tmp_path, capsys) -> None:
    a, _ = pair
    weights = a / "adapter_model.safetensors"
    bad(capsys, ["evaluate", "--small", "-e", a, "--max-samples", "2", "--out", weights, "--overwrite"],
        rf"{weights}: the output overlaps the input {a}", inputs=[a])
    task = tmp_path / "bv.parquet"
    shutil.copy(zoo.root / "tasks" / "brackets" / "validation.parquet", task)
    bad(capsys, ["evaluate", "--base", zoo.base_dir, "--task", f"b={task}", "--max-samples", "2",
                 "--out", task, "--overwrite"], rf"{task}: the output overlaps the input {task}", inputs=[task])


def test_the_overlap_is_refused_before_the_output_is_probed(pair, capsys) -> None:
    """The overlap check comes before the writability probe (a temporary folder made and removed
    where the output would go): an ``--out`` inside an input leaves the input folder's entries and
    modification time as they were (the probe used to create and remove one in it)."""
    a, b = pair
    before = a.stat().st_mtime_ns
    time.sleep(0.05)  # a change would show in the nanosecond mtime
    bad(capsys, ["analyze", "-q", "-e", a, "-e", b, "--out", a / "sub"],
        rf"{a}/sub: the output overlaps the input {a}", out=a / "sub", inputs=[a, b])
    bad(capsys, ["merge", "-q", "-e", a, "-e", b, "--space", "concat", "--out", a / "sub"],
        rf"{a}/sub: the output overlaps the input {a}", out=a / "sub", inputs=[a, b])
    bad(capsys, ["evaluate", "--small", "-e", a, "--max-samples", "2", "--out", a / "scores.parquet"],
        rf"{a}/scores.parquet: the output overlaps the input {a}", out=a / "scores.parquet", inputs=[a])
    assert a.stat().st_mtime_ns == before


def test_an_output_inside_a_zoo_read_as_input_is_refused(zoo_copy, capsys) -> None:
    """analyze/merge read experts of the zoo, evaluate reads the zoo itself: none writes into it."""
    experts = ["-e", zoo_copy / "experts" / "brackets", "-e", zoo_copy / "experts" / "majority"]
    before = _names(zoo_copy)
    bad(capsys, ["analyze", "-q", *experts, "--out", zoo_copy / "analysis"],
        rf"{zoo_copy}/analysis: the output overlaps the zoo {zoo_copy} \(input .*brackets lies in it\)",
        out=zoo_copy / "analysis", inputs=[zoo_copy])
    bad(capsys, ["merge", "-q", *experts, "--space", "concat", "--out", zoo_copy / "merged"],
        rf"{zoo_copy}/merged: the output overlaps the zoo {zoo_copy}", out=zoo_copy / "merged", inputs=[zoo_copy])
    bad(capsys, ["evaluate", "--zoo", zoo_copy, "--tasks", "brackets", "--max-samples", "2",
                 "--out", zoo_copy / "scores.parquet"],
        rf"{zoo_copy}/scores.parquet: the output overlaps the input {zoo_copy}", out=zoo_copy / "scores.parquet",
        inputs=[zoo_copy])
    assert _names(zoo_copy) == before


# --- 2. --rank that would be ignored, and the rank the manifest records --------------------------------
def test_merge_rank_with_full_fine_tunes_is_refused(zoo, tmp_path, capsys) -> None:
    full = [a for n in ("brackets", "majority") for a in ("-e", zoo.full_dirs[n])]
    bad(capsys, ["merge", "-q", "--base", zoo.base_dir, *full, "--rank", "4", "--out", tmp_path / "o4"],
        r"merge\.rank \(4\) .*full fine-tunes, written as a full checkpoint, which has no rank: drop --rank",
        out=tmp_path / "o4")
    lora = [a for n in ("brackets", "majority") for a in ("-e", zoo.expert_dirs[n])]
    bad(capsys, ["merge", "-q", "--base", zoo.base_dir, *lora, "--rank", "4", "--format", "full",
                 "--out", tmp_path / "of"], r"merge\.rank \(4\) .*output_format `full`", out=tmp_path / "of")
    for space in ("ab", "concat"):  # the factors are written as they are: --rank would be ignored
        bad(capsys, ["merge", "-q", *lora, "--space", space, "--rank", "4", "--out", tmp_path / space],
            rf"merge\.rank \(4\) .*merge\.space `{space}` writes the merged LoRA factors as they are", out=tmp_path / space)


def test_merge_manifest_records_the_effective_rank(zoo, tmp_path, capsys) -> None:
    out = tmp_path / "r1000"
    lora = [a for n in ("brackets", "majority") for a in ("-e", zoo.expert_dirs[n])]
    assert main(["merge", "-q", *lora, "--method", "ties", "--rank", "1000", "--out", str(out)]) == 0
    r = json.loads((out / "adapter_config.json").read_text())["r"]
    man = json.loads((out / "evomerge_manifest.json").read_text())
    assert r < 1000
    assert man["rank"] == r and man["rank_requested"] == 1000


# --- 3. merge.data rows checked as evaluate checks them ------------------------------------------------
def test_merge_data_rows_are_encoded_with_the_base_tokenizer(zoo, pair, tmp_path, capsys) -> None:
    a, b = pair
    n_pos = json.loads((zoo.base_dir / "config.json").read_text())["max_position_embeddings"]
    long = jsonl(tmp_path / "long.jsonl", [{"prompt": "12", "answer": "21"}, {"prompt": "1" * 200, "answer": "1"}])
    euro = jsonl(tmp_path / "euro.jsonl", [{"prompt": "12\u20ac", "answer": "21"}])
    for method in ("regmean", "fisher"):
        args = ["merge", "-q", "-e", a, "-e", b, "--base", zoo.base_dir, "--method", method, "--rank", "4"]
        bad(capsys, [*args, "--data", long, "--out", tmp_path / "o"],
            rf"long\.jsonl \(merge\.data\): line 2 is \d+ tokens .*context of {n_pos} positions",
            out=tmp_path / "o", inputs=[long, a, b])
        bad(capsys, [*args, "--data", euro, "--out", tmp_path / "o"],
            r"euro\.jsonl \(merge\.data\): line 1: the prompt holds characters outside the tokenizer's vocabulary "
            r"\('€'\)", out=tmp_path / "o", inputs=[euro, a, b])


# --- 4. evaluate: an adapter of another base is refused naming its file, before the model loads -------
def test_evaluate_refuses_an_adapter_of_another_base_before_loading(zoo, capsys, monkeypatch) -> None:
    from evomerge.evaluation import Evaluator
    from evomerge.zoo import shipped_root

    other = shipped_root("default")
    if other is None:
        pytest.skip("the default zoo is not shipped in this checkout")

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the experts were checked")

    monkeypatch.setattr(Evaluator, "from_zoo", classmethod(no_model))
    caesar = other / "experts" / "caesar"
    bad(capsys, ["evaluate", "--small", "-e", zoo.expert_dirs["rev_digits"], "-e", caesar],
        rf"^error: {caesar}/adapter_(model\.safetensors|config\.json): .*base {zoo.base_dir}")


# --- 5. --base FILE ------------------------------------------------------------------------------------
def test_base_that_is_a_file_says_so(zoo, pair, tmp_path, capsys) -> None:
    a, b = pair
    cfg = zoo.base_dir / "config.json"
    bad(capsys, ["merge", "-q", "-e", a, "-e", b, "--base", cfg, "--out", tmp_path / "o"],
        rf"{cfg}: is a file, not a folder", out=tmp_path / "o")
    task = jsonl(tmp_path / "t.jsonl", [{"prompt": "12", "answer": "21"}])
    bad(capsys, ["evaluate", "--base", cfg, "--task", f"t={task}", "--max-samples", "2"], rf"{cfg}: is a file, not a folder")
    bad(capsys, ["evaluate", "--base", cfg, "-e", a, "--task", f"t={task}", "--max-samples", "2"],
        rf"{cfg}: is a file, not a folder")
