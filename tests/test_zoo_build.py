"""The built-in zoo: the shipped zoos and their manifests, the small build end to end, experts vs
base, "ab" fidelity, caching, locking, bad folders, CLI (build, verify, path)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from evomerge.cli import main
from evomerge.evaluation.task_data import load_examples
from evomerge.errors import ExpertLoadError
from evomerge.evaluation import Evaluator
from evomerge.experts.peft_io import load_peft_adapter
from evomerge.io import sha256_tree
from evomerge.zoo import FORMAT_VERSION, Zoo, build_zoo, ensure_zoo, shipped_root
from evomerge.zoo.model import PROFILES, recipe_hash
from _zoo_helpers import ab_error

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
        full = AutoModelForCausalLM.from_pretrained(small_zoo.full_dirs[task])  # a whole-model checkpoint
        assert (small_zoo.full_dirs[task] / "model.safetensors").is_file()
        assert {k for k, _ in full.named_parameters()} == {k for k, _ in base.named_parameters()}


def _own_gains(zoo, split="test"):
    """Test-split gain of each LoRA expert and each full fine-tune on its own task, measured here
    from the stored files (the full fine-tune as a task vector: its weights minus the base's)."""
    from safetensors.torch import load_file

    ev = Evaluator.from_zoo(zoo, max_samples=200)
    base_sd = load_file(zoo.base_dir / "model.safetensors")
    lora = [load_peft_adapter(zoo.expert_dirs[t]).modules for t in zoo.tasks]
    full = [{k: v.float() - base_sd[k].float() for k, v in load_file(zoo.full_dirs[t] / "model.safetensors").items()}
            for t in zoo.tasks]
    base, *rest = ev.evaluate_many([{}] + lora + full, split=split)
    n = len(zoo.tasks)
    return base, {t: (rest[i], rest[n + i]) for i, t in enumerate(zoo.tasks)}


def test_each_expert_beats_the_base_on_its_test_split(small_zoo):
    base, own = _own_gains(small_zoo)
    for t, (lora, full) in own.items():
        for r in (lora, full):
            gain = r.per_task[t] - base.per_task[t]
            assert gain >= 0.03, f"{t}: expert {r.per_task[t]:.3f} vs base {base.per_task[t]:.3f}"
            assert r.extra["metrics"][t]["cross_entropy"] < base.extra["metrics"][t]["cross_entropy"]


def test_default_experts_beat_the_base_by_the_target_margin():
    """Shipped default zoo, test split: every LoRA expert gains >= 0.15 on its own task (the
    target), every full fine-tune >= 0.05 (shorter training; the weakest, mark_swap, gains ~0.10)."""
    zoo = ensure_zoo("default")
    base, own = _own_gains(zoo)
    assert base.fitness <= 0.55
    for t, (lora, full) in own.items():
        assert base.per_task[t] <= 0.8, t
        assert lora.per_task[t] - base.per_task[t] >= 0.15, f"{t}: {lora.per_task[t]:.3f} vs {base.per_task[t]:.3f}"
        assert full.per_task[t] - base.per_task[t] >= 0.05, f"{t}: full {full.per_task[t]:.3f}"
    # the manifest records the same test-split scores
    rec = zoo.manifest["scores"]["test"]
    assert all(rec[t]["expert"]["token_accuracy"] == pytest.approx(own[t][0].per_task[t], abs=1e-6) for t in zoo.tasks)


def _default_ab_error():
    zoo = ensure_zoo("default")
    return zoo, ab_error([load_peft_adapter(zoo.expert_dirs[t]).modules for t in zoo.tasks])


def test_recorded_ab_fidelity_is_the_hand_computed_one():
    zoo, err = _default_ab_error()
    assert zoo.manifest["ab_fidelity"] == pytest.approx(err, abs=1e-4)


# issue 11's target, met by the warmed-up shared A (docs/zoo.md)
def test_ab_fidelity_of_the_shipped_default_zoo():
    assert _default_ab_error()[1] <= 0.10


def test_shared_lora_init_is_what_makes_ab_close(tmp_path):
    shared = build_zoo(tmp_path / "shared", profile="tiny", progress=False)
    apart = build_zoo(tmp_path / "apart", profile="tiny", progress=False, shared_init=False)
    assert shared.manifest["training"]["shared_init"] and not apart.manifest["training"]["shared_init"]
    e_shared = [load_peft_adapter(shared.expert_dirs[t]).modules for t in shared.tasks]
    e_apart = [load_peft_adapter(apart.expert_dirs[t]).modules for t in apart.tasks]
    key = next(iter(e_shared[0]))
    assert not torch.equal(e_shared[0][key].A, e_shared[1][key].A)  # trained apart from one start
    assert ab_error(e_shared) < 0.5 * ab_error(e_apart)
    assert shared.manifest["ab_fidelity"] == pytest.approx(ab_error(e_shared), abs=1e-4)


@pytest.mark.parametrize("profile", ["small", "default"])
def test_shipped_zoo_matches_its_manifest_and_recipe(profile):
    root = shipped_root(profile)
    assert root is not None, f"no shipped {profile} zoo"
    zoo = Zoo.open(root, verify=True)
    assert zoo.verify() == []
    assert set(zoo.manifest["files"]) == {p.relative_to(root).as_posix() for p in root.rglob("*")
                                          if p.is_file() and p.name != "zoo.json"}
    assert zoo.manifest["format_version"] == FORMAT_VERSION and zoo.profile == profile
    assert zoo.manifest["recipe"] == recipe_hash(PROFILES[profile]), "recipe changed: rebuild the shipped zoo"
    assert ensure_zoo(profile).root == root  # used at once, no build
    corr = zoo.manifest["correlations"]
    assert corr["tasks"] == zoo.tasks and len(corr["lora"]) == len(zoo.tasks)
    assert all(corr["lora"][i][i] == pytest.approx(1.0, abs=1e-3) for i in range(len(zoo.tasks)))


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
    # experts trained in two forked processes: the same files as one process writes
    again = build_zoo(tmp_path / "again", profile="tiny", seed=0, progress=False, workers=2)
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
    with pytest.raises(ExpertLoadError, match="majority/adapter_model.safetensors.*zoo build"):
        Zoo.open(root)
    with pytest.raises(ExpertLoadError, match="majority/adapter_model.safetensors.*zoo build"):
        ensure_zoo("tiny", root)  # a user's folder is never rebuilt silently
    assert not (root / "experts" / "majority" / "adapter_model.safetensors").exists()
    shutil.rmtree(root)
    shutil.copytree(tiny.root, root)
    with open(root / "tasks" / "brackets" / "test.parquet", "ab") as fh:
        fh.write(b"x")
    Zoo.open(root)  # complete: opens without hashing
    with pytest.raises(ExpertLoadError, match="brackets/test.parquet: sha256 differs.*zoo build --out"):
        ensure_zoo("tiny", root)
    m = json.loads((root / "zoo.json").read_text())
    m["format_version"] = FORMAT_VERSION - 1
    (root / "zoo.json").write_text(json.dumps(m))
    with pytest.raises(ExpertLoadError, match="zoo.json: zoo format version 1.*zoo build --out"):
        ensure_zoo("tiny", root)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ExpertLoadError, match="not a zoo"):
        ensure_zoo("tiny", foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(ExpertLoadError, match="no task `nope`"):
        tiny.task_files("nope")


def test_an_existing_zoo_folder_is_read_without_a_lock(small_zoo, tmp_path):
    """A zoo folder given as root is only read: nothing is written beside it (the shipped zoos
    live in the package, which may be read-only)."""
    root = tmp_path / "z"
    shutil.copytree(small_zoo.root, root)
    assert ensure_zoo("small", root).root == root
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z"]


def test_cli_verify_and_path(small_zoo, tmp_path, capsys):
    assert main(["zoo", "path", "--small"]) == 0
    assert capsys.readouterr().out.strip() == str(shipped_root("small"))
    assert main(["zoo", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(shipped_root("default"))
    assert main(["zoo", "verify", "--small"]) == 0
    assert "files match the manifest" in capsys.readouterr().out
    root = tmp_path / "z"
    shutil.copytree(small_zoo.root, root)
    (root / "full" / "majority" / "config.json").write_text("{}")
    (root / "extra.txt").write_text("x")
    assert main(["zoo", "verify", str(root)]) == 1
    err = capsys.readouterr().err
    assert "full/majority/config.json: sha256 differs" in err and "extra.txt: not in the manifest" in err
    assert "zoo build --out" in err
    assert main(["zoo", "verify", str(tmp_path / "nothing")]) == 2
    assert "not a zoo folder" in capsys.readouterr().err


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


def test_cli_info_says_how_the_shared_a_was_made(capsys):
    assert main(["zoo", "info", "--zoo", "default"]) == 0
    tr = ensure_zoo("default").manifest["training"]
    assert f"A warmed up {tr['lora_a_warmup_steps']} steps on all tasks" in capsys.readouterr().out
    assert tr["lora_a_init"] == "warmup" and tr["lora_a_lr_ratio"] == 1 / 16
    assert main(["zoo", "info", "--small"]) == 0
    assert "warmed up" not in capsys.readouterr().out  # the small zoo keeps peft's random A


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
