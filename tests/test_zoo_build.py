"""The built-in zoo: the small build end to end, experts vs base, caching, locking, bad folders, CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from evomerge.cli import main
from evomerge.data import load_examples
from evomerge.errors import ExpertLoadError
from evomerge.evaluation import Evaluator
from evomerge.experts.peft_io import load_peft_adapter
from evomerge.io import sha256_tree
from evomerge.zoo import FORMAT_VERSION, Zoo, build_zoo, ensure_zoo

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_zoo(tmp_path_factory.mktemp("zoo") / "tiny", profile="tiny", seed=0, progress=False)


def test_small_zoo_is_standard_hf_and_peft(small_zoo):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = json.loads((small_zoo.root / "zoo.json").read_text())
    assert m["format_version"] == FORMAT_VERSION and m["profile"] == "small"
    assert len(small_zoo.tasks) >= 6
    assert ("rev_digits", "sort_digits") in small_zoo.related_pairs
    tok = AutoTokenizer.from_pretrained(small_zoo.base_dir)
    ids = tok("<brackets>([=")["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == 5
    assert tok.decode(ids, skip_special_tokens=True) == "<brackets>([="
    base = AutoModelForCausalLM.from_pretrained(small_zoo.base_dir)
    for task in small_zoo.tasks:
        files = small_zoo.task_files(task)
        sizes = {s: len(load_examples(p)) for s, p in files.items()}
        assert sizes["train"] > sizes["validation"] > 0 and sizes["test"] == sizes["validation"]
        peft_model = PeftModel.from_pretrained(base, small_zoo.expert_dirs[task], adapter_name=task)
        assert peft_model.peft_config[task].r == 8 and peft_model.peft_config[task].lora_alpha == 16
        base = peft_model.unload()


def test_each_expert_beats_the_base_on_its_test_split(small_zoo):
    ev = Evaluator.from_zoo(small_zoo, max_samples=200)
    experts = [load_peft_adapter(small_zoo.expert_dirs[t]).modules for t in small_zoo.tasks]
    base, *own = ev.evaluate_many([{}] + experts, split="test")
    for t, r in zip(small_zoo.tasks, own):
        gain = r.per_task[t] - base.per_task[t]
        assert gain >= 0.03, f"{t}: expert {r.per_task[t]:.3f} vs base {base.per_task[t]:.3f}"
        assert r.extra["metrics"][t]["cross_entropy"] < base.extra["metrics"][t]["cross_entropy"]


def test_merge_of_two_unrelated_experts_is_between_base_and_experts(small_zoo):
    from evomerge.merging.apply import merge_lora

    a, b = "rev_digits", "brackets"
    ev = Evaluator.from_zoo(small_zoo, tasks=[a, b], max_samples=150)
    ea, eb = (load_peft_adapter(small_zoo.expert_dirs[t]).modules for t in (a, b))
    merged = merge_lora("task_arithmetic", [ea, eb], params={"lambda": 1.0})
    base, ra, rb, rm = ev.evaluate_many([{}, ea, eb, merged])
    for t, own in ((a, ra), (b, rb)):
        assert base.per_task[t] - 0.02 <= rm.per_task[t] <= own.per_task[t] + 0.02, t
    # the merge keeps a real part of both gains on the union of the two tasks
    assert rm.fitness > base.fitness + 0.25 * ((ra.per_task[a] + rb.per_task[b]) / 2 - base.fitness)


def test_build_is_seeded_and_reproducible(tiny, tmp_path):
    again = build_zoo(tmp_path / "again", profile="tiny", seed=0, progress=False)
    other = build_zoo(tmp_path / "other", profile="tiny", seed=1, progress=False)
    for part in ("base", "experts", "tasks"):
        assert sha256_tree(tiny.root / part) == sha256_tree(again.root / part), part
        assert sha256_tree(tiny.root / part) != sha256_tree(other.root / part), part
    assert tiny.manifest["scores"] == again.manifest["scores"]


def test_parallel_ensure_zoo_builds_once(tmp_path):
    code = (
        "import sys, json; from evomerge.zoo import ensure_zoo; "
        "z = ensure_zoo('tiny', sys.argv[1]); print(json.dumps(z.manifest['built']))"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "z")], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0].strip().splitlines()[-1] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1]  # the second process found the first one's build


def test_incomplete_stale_and_foreign_folders(tiny, tmp_path):
    root = tmp_path / "z"
    shutil.copytree(tiny.root, root)
    (root / "experts" / "majority" / "adapter_model.safetensors").unlink()
    with pytest.raises(ExpertLoadError, match="majority/adapter_model.safetensors"):
        Zoo.open(root)
    rebuilt = ensure_zoo("tiny", root)  # incomplete: rebuilt
    assert (rebuilt.expert_dirs["majority"] / "adapter_model.safetensors").is_file()
    m = json.loads((root / "zoo.json").read_text())
    m["format_version"] = FORMAT_VERSION + 1
    (root / "zoo.json").write_text(json.dumps(m))
    with pytest.raises(ExpertLoadError, match="format version"):
        Zoo.open(root)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ExpertLoadError, match="not a zoo"):
        ensure_zoo("tiny", foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(ExpertLoadError, match="no task `nope`"):
        tiny.task_files("nope")


def test_cli_build_info_evaluate(tiny, small_zoo, capsys):
    assert main(["zoo", "info", str(tiny.root)]) == 0
    out = capsys.readouterr().out
    assert "brackets" in out and "majority" in out and "expert tok-acc" in out
    # an existing zoo of another profile is refused without --overwrite
    assert main(["zoo", "build", "--out", str(tiny.root), "--small"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["zoo", "build", "--out", str(small_zoo.root), "--small"]) == 0
    assert "already built" in capsys.readouterr().out
    assert main(["evaluate", "--zoo", str(tiny.root), "--max-samples", "20", "--split", "test"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:3] == ["candidate", "brackets", "majority"]
    assert [line.split()[0] for line in lines[2:]] == ["base", "brackets", "majority"]


def test_cli_evaluate_user_task_and_adapter(small_zoo, tmp_path, capsys):
    """A user's own base folder + task folder + adapter folder go through the same path."""
    task_dir = small_zoo.task_files("brackets")["validation"].parent
    out = tmp_path / "scores.parquet"
    args = ["evaluate", "--base", str(small_zoo.base_dir), "--task", f"mine={task_dir}",
            "--expert", str(small_zoo.expert_dirs["brackets"]), "--max-samples", "30", "--out", str(out)]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[2:4]] == ["base", "brackets"]
    base_score, expert_score = (float(line.split()[1]) for line in lines[2:4])
    assert expert_score > base_score
    import pyarrow.parquet as pq

    table = pq.read_table(out).to_pydict()
    assert set(table["metric"]) >= {"token_accuracy", "exact_match", "cross_entropy"}
    assert main(["evaluate", "--task", f"mine={task_dir}"]) == 2
    assert "--base" in capsys.readouterr().err
