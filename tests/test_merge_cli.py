"""`evomerge merge` end to end: real peft adapters / checkpoints in, loadable models out."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from _cli_helpers import run_cli
from evomerge.cli import main
from evomerge.io import sha256_tree
from evomerge.merging.registry import all_methods, get_merge_method
from test_experts_fixtures import load_base, logits, make_base, make_full, make_lora, state_dict_of, with_delta

torch.set_num_threads(1)
IDS = torch.tensor([[1, 5, 9, 14, 20, 3, 7, 30, 11, 4]])


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    make_base(root / "base")
    make_lora(root / "base", root / "l1", seed=1, r=4, alpha=8)
    make_lora(root / "base", root / "l2", seed=2, r=8, alpha=8, use_rslora=True)  # other rank, rsLoRA
    make_lora(root / "base", root / "l4", seed=4, r=4, alpha=16)
    make_full(root / "base", root / "f1", seed=1)
    make_full(root / "base", root / "f2", seed=2, max_shard_size="20KB")
    for i, rows in enumerate([[("ab=", "ba"), ("xy=", "yx")], [("1+2=", "3"), ("4+4=", "8"), ("2+2=", "4")]]):
        (root / f"d{i + 1}.jsonl").write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in rows))
    return root


def _peft_delta(root, name):
    """Independent task vector: peft's merge_and_unload minus the base."""
    from peft import PeftModel

    base = load_base(root / "base")
    sd0 = state_dict_of(base)
    merged = PeftModel.from_pretrained(base, str(root / name)).merge_and_unload().state_dict()
    return {k: merged[k] - sd0[k] for k in sd0 if float((merged[k] - sd0[k]).abs().max()) > 0}


def _merge(args, capsys):
    """``evomerge merge --quiet ARGS`` in-process: ``(exit code, stdout, stderr)``."""
    return run_cli(["merge", "--quiet", *args], capsys)


def _peft_logits(root, out):
    from peft import PeftModel

    return logits(PeftModel.from_pretrained(load_base(root / "base"), str(out)), IDS)


def test_lora_concat_task_arithmetic_roundtrip(zoo, tmp_path, capsys):
    before = {n: sha256_tree(zoo / n) for n in ("l1", "l2", "base")}
    out = tmp_path / "ta"
    code, stdout, err = _merge(["-e", zoo / "l1", "-e", zoo / "l2", "--method", "task_arithmetic", "--param", "lambda=0.7",
                                "--space", "concat", "--weights", "1,0.5", "--out", out], capsys)
    assert code == 0, err
    assert "pool: 2 lora expert(s)" in stdout and str(out) in stdout
    d1, d2 = _peft_delta(zoo, "l1"), _peft_delta(zoo, "l2")
    want = with_delta(load_base(zoo / "base"), {k: 0.7 * (d1[k] + 0.5 * d2[k]) for k in d1}, IDS)
    torch.testing.assert_close(_peft_logits(zoo, out), want, atol=2e-5, rtol=1e-4)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 12  # exact concat: 4 + 8
    man = json.loads((out / "evomerge_manifest.json").read_text())
    assert man["method"] == "task_arithmetic" and man["params"] == {"lambda": 0.7} and man["space"] == "concat"
    assert man["weights"] == [1.0, 0.5] and man["seed"] == 0 and man["rht"]["enabled"] is False
    assert [e["sha256"] for e in man["inputs"]["experts"]] == [before["l1"], before["l2"]]
    assert {n: sha256_tree(zoo / n) for n in before} == before  # inputs untouched
    # the same merge written as a full checkpoint (base + delta)
    code, _, err = _merge(["-e", zoo / "l1", "-e", zoo / "l2", "-p", "lambda=0.7", "--space", "concat", "--weights", "1,0.5",
                           "--format", "full", "--base", zoo / "base", "--out", tmp_path / "ta_full"], capsys)
    assert code == 0, err
    torch.testing.assert_close(logits(load_base(tmp_path / "ta_full"), IDS), want, atol=2e-5, rtol=1e-4)


def test_lora_ties_delta_with_rank(zoo, tmp_path, capsys):
    out = tmp_path / "ties"
    code, _, err = _merge(["-e", zoo / "l1", "-e", zoo / "l2", "--method", "ties", "-p", "density=0.5",
                           "--space", "delta", "--rank", "32", "--seed", "3", "--out", out], capsys)
    assert code == 0, err
    d1, d2 = _peft_delta(zoo, "l1"), _peft_delta(zoo, "l2")
    ties = get_merge_method("ties")
    merged = {k: ties(torch.stack([d1[k], d2[k]]), None, density=0.5) for k in d1}
    want = with_delta(load_base(zoo / "base"), merged, IDS)
    # rank 32 >= min(out, in): the SVD is exact
    torch.testing.assert_close(_peft_logits(zoo, out), want, atol=2e-5, rtol=1e-4)
    man = json.loads((out / "evomerge_manifest.json").read_text())
    assert {k: man["params"][k] for k in ("density", "lambda", "majority_sign_method")} == {
        "density": 0.5, "lambda": 1.0, "majority_sign_method": "total"}
    assert man["seed"] == 3 and man["rank"] == 32 and man["output_format"] == "peft"
    # a low rank is a truncation: the adapter really has that rank
    code, _, err = _merge(["-e", zoo / "l1", "-e", zoo / "l2", "--method", "ties", "--rank", "2", "--out", tmp_path / "r2"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "r2" / "adapter_config.json").read_text())["r"] == 2


def _factors(root, name, scale):
    """(A, scale * B) per base weight, read straight from the adapter file."""
    from safetensors.torch import load_file

    sd = load_file(str(root / name / "adapter_model.safetensors"))
    out = {}
    for k, v in sd.items():
        if ".lora_A." in k:
            w = k.replace("base_model.model.", "").replace(".lora_A.weight", ".weight")
            out[w] = (v, scale * sd[k.replace("lora_A", "lora_B")])
    return out


def test_lora_ab_space_merges_factors(zoo, tmp_path, capsys):
    out = tmp_path / "ab"
    code, _, err = _merge(["-e", zoo / "l1", "-e", zoo / "l4", "--space", "ab", "--weights", "0.6,0.4", "--out", out], capsys)
    assert code == 0, err
    f1, f4 = _factors(zoo, "l1", 8 / 4), _factors(zoo, "l4", 16 / 4)
    delta = {k: (0.6 * f1[k][1] + 0.4 * f4[k][1]) @ (0.6 * f1[k][0] + 0.4 * f4[k][0]) for k in f1}
    want = with_delta(load_base(zoo / "base"), delta, IDS)
    torch.testing.assert_close(_peft_logits(zoo, out), want, atol=2e-5, rtol=1e-4)
    # cross terms: not the weighted sum of the two deltas
    k = next(iter(f1))
    lin = 0.6 * f1[k][1] @ f1[k][0] + 0.4 * f4[k][1] @ f4[k][0]
    assert float((lin - delta[k]).abs().max()) > 1e-3


@pytest.mark.parametrize("space", ["ab", "concat"])
def test_factor_spaces_with_rht_on_deltas_and_a_rank(zoo, tmp_path, capsys, space):
    """``--space ab|concat --rht --rank R`` (docs/merging.md): the LoRA factors are merged as they
    are, RHT (domain delta) makes the result dense, and ``--rank`` is its truncated SVD. Checked
    against the same steps by hand: the merged factors' delta, RHT of it, then the exact SVD
    (rank 32 covers the tiny model's matrices). It was refused: the rank reached the factor merge."""
    from evomerge.config.sections import RHTConfig
    from evomerge.merging.rht import apply_rht

    out = tmp_path / space
    experts = ["-e", zoo / "l1", "-e", zoo / ("l4" if space == "ab" else "l2")]
    code, _, err = _merge([*experts, "--space", space, "--weights", "0.6,0.4", "--rht", "--rank", "32",
                           "--out", out], capsys)
    assert code == 0, err
    if space == "ab":
        f1, f4 = _factors(zoo, "l1", 8 / 4), _factors(zoo, "l4", 16 / 4)
        delta = {k: (0.6 * f1[k][1] + 0.4 * f4[k][1]) @ (0.6 * f1[k][0] + 0.4 * f4[k][0]) for k in f1}
    else:
        d1, d2 = _peft_delta(zoo, "l1"), _peft_delta(zoo, "l2")
        delta = {k: 0.6 * d1[k] + 0.4 * d2[k] for k in d1}
    want = with_delta(load_base(zoo / "base"), apply_rht(delta, RHTConfig(enabled=True), 0), IDS)
    torch.testing.assert_close(_peft_logits(zoo, out), want, atol=2e-5, rtol=1e-4)
    man = json.loads((out / "evomerge_manifest.json").read_text())
    assert man["space"] == space and man["rank_requested"] == 32 and man["rht"]["enabled"] is True
    assert man["data_samples"] is None  # no statistics read
    # below full rank the order shows: factor merge, RHT of the dense result, then its truncated SVD
    low = tmp_path / f"{space}-r2"
    code, _, err = _merge([*experts, "--space", space, "--weights", "0.6,0.4", "--rht", "--rank", "2",
                           "--out", low], capsys)
    assert code == 0, err

    def top2(m):
        u, sv, vh = torch.linalg.svd(m.double(), full_matrices=False)
        return ((u[:, :2] * sv[:2]) @ vh[:2]).float()

    rht = apply_rht(delta, RHTConfig(enabled=True), 0)
    want = with_delta(load_base(zoo / "base"), {k: top2(v) for k, v in rht.items()}, IDS)
    torch.testing.assert_close(_peft_logits(zoo, low), want, atol=2e-5, rtol=1e-4)


def test_full_finetunes_to_checkpoint(zoo, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    before = {n: sha256_tree(zoo / n) for n in ("f1", "f2", "base")}
    out = tmp_path / "full"
    code, _, err = _merge(["-e", zoo / "f1", "-e", zoo / "f2", "--base", zoo / "base", "--method", "task_arithmetic",
                           "-p", "lambda=0.5", "--out", out], capsys)
    assert code == 0, err
    sd0 = state_dict_of(load_base(zoo / "base"))
    sd1, sd2 = state_dict_of(load_base(zoo / "f1")), state_dict_of(load_base(zoo / "f2"))
    got = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).state_dict()
    for k in sd0:
        torch.testing.assert_close(got[k], sd0[k] + 0.5 * ((sd1[k] - sd0[k]) + (sd2[k] - sd0[k])), atol=1e-6, rtol=1e-5)
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()
    assert {n: sha256_tree(zoo / n) for n in before} == before
    man = json.loads((out / "evomerge_manifest.json").read_text())
    assert man["inputs"]["base"]["sha256"] == before["base"] and man["expert_kind"] == "full"


def test_rht_applied_to_merged_task_vector(zoo, tmp_path, capsys):
    from evomerge.config import RHTConfig
    from evomerge.merging.rht import apply_rht

    cfg = tmp_path / "rht.yaml"
    cfg.write_text("rht:\n  gamma: 0.8\n  alpha: 0.2\n  sigma_g: 0.05\n  seed: 5\n")
    out = tmp_path / "rht"
    code, _, err = _merge(["--config", cfg, "--rht", "-e", zoo / "f1", "-e", zoo / "f2", "--base", zoo / "base",
                           "-p", "lambda=0.5", "--out", out], capsys)
    assert code == 0, err
    sd0 = state_dict_of(load_base(zoo / "base"))
    sd1, sd2 = state_dict_of(load_base(zoo / "f1")), state_dict_of(load_base(zoo / "f2"))
    merged = {k: 0.5 * ((sd1[k] - sd0[k]) + (sd2[k] - sd0[k])) for k in sd0}
    rht = apply_rht(merged, RHTConfig(enabled=True, gamma=0.8, alpha=0.2, sigma_g=0.05, seed=5), 5)
    got = state_dict_of(load_base(out))
    changed = 0
    for k in sd0:
        torch.testing.assert_close(got[k], sd0[k] + rht[k], atol=1e-6, rtol=1e-5)
        changed += int(float((rht[k] - merged[k]).abs().max()) > 1e-4)
    assert changed > 0
    man = json.loads((out / "evomerge_manifest.json").read_text())
    assert man["rht"] == {**RHTConfig().model_dump(mode="json"), "enabled": True, "gamma": 0.8, "alpha": 0.2,
                          "sigma_g": 0.05, "seed": 5}


def test_emr_per_task_outputs(zoo, tmp_path, capsys):
    from evomerge.pipelines.merge.job import load_emr_task

    out = tmp_path / "emr"
    code, _, err = _merge(["-e", zoo / "l1", "-e", zoo / "l2", "--method", "emr", "--out", out], capsys)
    assert code == 0, err
    from evomerge.merging.apply import merge_task_vectors

    d = [_peft_delta(zoo, "l1"), _peft_delta(zoo, "l2")]
    # EMR's rescaler is one scalar per task over the whole model: merge every tensor at once
    refs = merge_task_vectors("emr", [(k, torch.stack([d[0][k], d[1][k]])) for k in d[0]])
    for i, task in enumerate(["l1", "l2"]):
        got = load_emr_task(out, task)
        assert set(got) == set(d[0])
        for k in d[0]:
            ref = refs[k]
            want = ref.rescalers[i] * ref.masks[i] * ref.unified
            torch.testing.assert_close(got[k], want, atol=1e-6, rtol=1e-5)
            # the task's own vector keeps its signs where the mask is on
            assert bool(((got[k] * d[i][k]) >= 0).all())
    torch.testing.assert_close(load_emr_task(out, 1)[k], load_emr_task(out, "l2")[k])


def test_regmean_with_data_and_config_file(zoo, tmp_path, capsys):
    import yaml

    from evomerge.experts.pool import load_pool
    from evomerge.experts.statistics import pool_statistics

    cfg = tmp_path / "merge.yaml"
    cfg.write_text(yaml.safe_dump({
        "experts": {"base": str(zoo / "base"), "experts": [str(zoo / "l1"), str(zoo / "l2")]},
        "merge": {"method": "regmean", "params": {"alpha": 0.5}, "data": [str(zoo / "d1.jsonl"), str(zoo / "d2.jsonl")],
                  "output_format": "full"},
    }))
    out = tmp_path / "rm"
    code, _, err = _merge(["--config", cfg, "-p", "alpha=0.8", "--out", out], capsys)  # flag overrides the file
    assert code == 0, err
    man = json.loads((out / "evomerge_manifest.json").read_text())
    assert man["params"] == {"alpha": 0.8} and len(man["inputs"]["data"]) == 2
    assert man["data_samples"] == 128  # how many rows of each file the statistics read (the default)
    pool = load_pool([zoo / "l1", zoo / "l2"], base=zoo / "base")
    stats = pool_statistics(pool, {"gram"}, [zoo / "d1.jsonl", zoo / "d2.jsonl"], 128)
    rm = get_merge_method("regmean")
    sd0 = state_dict_of(load_base(zoo / "base"))
    got = state_dict_of(load_base(out))
    for k in pool.keys():
        want = sd0[k] + rm(pool.stacked(k), None, stats=stats[k], alpha=0.8)
        torch.testing.assert_close(got[k], want, atol=1e-5, rtol=1e-4)
    # Fisher with one shared data file, written as a rank-32 (exact) adapter
    out = tmp_path / "fi"
    code, _, err = _merge(["-e", zoo / "l1", "-e", zoo / "l2", "--base", zoo / "base", "--method", "fisher",
                           "--data", zoo / "d2.jsonl", "--rank", "32", "--out", out], capsys)
    assert code == 0, err
    fstats = pool_statistics(pool, {"fisher"}, [zoo / "d2.jsonl"], 128)
    fi = get_merge_method("fisher")
    merged = {k: fi(pool.stacked(k), None, stats=fstats[k]) for k in pool.keys()}
    k = pool.keys()[0]
    assert float((merged[k] - pool.stacked(k).mean(0)).abs().max()) > 1e-6  # not a plain average
    want = with_delta(load_base(zoo / "base"), merged, IDS)
    torch.testing.assert_close(_peft_logits(zoo, out), want, atol=2e-5, rtol=1e-4)


# --- bad inputs: error named, exit 2, nothing written -------------------------------------------


def _bad(zoo, tmp_path, capsys, args, match, out_name="out"):
    import re

    out = tmp_path / out_name
    code, _, err = _merge([*map(str, args), "--out", out], capsys)
    assert code == 2, err
    assert err.startswith("error: ") and re.search(match, err), err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{out_name}.tmp")]


def test_bad_inputs_exit_2_and_write_nothing(zoo, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    l1, l2 = ["-e", zoo / "l1"], ["-e", zoo / "l2"]
    _bad(zoo, tmp_path, capsys, [*l1, "-e", tmp_path / "missing"], r"missing: expert not found")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(zoo / "l2", corrupt)
    data = (corrupt / "adapter_model.safetensors").read_bytes()
    (corrupt / "adapter_model.safetensors").write_bytes(data[:-100])
    _bad(zoo, tmp_path, capsys, [*l1, "-e", corrupt], r"corrupt/adapter_model\.safetensors")
    make_base(tmp_path / "wide", tokenizer=False, hidden_size=48)
    make_lora(tmp_path / "wide", tmp_path / "wide_l", seed=3, base_name=str(zoo / "base"))
    _bad(zoo, tmp_path, capsys, [*l1, "-e", tmp_path / "wide_l"], r"wide_l/adapter_model\.safetensors: .*shape")
    make_lora(zoo / "base", tmp_path / "qk", seed=4, targets=("q_proj", "k_proj"))
    _bad(zoo, tmp_path, capsys, [*l1, "-e", tmp_path / "qk"], r"qk/adapter_model\.safetensors: target modules differ")
    make_lora(zoo / "base", tmp_path / "other", seed=5, base_name="someone/else")
    _bad(zoo, tmp_path, capsys, [*l1, "-e", tmp_path / "other"], r"other/adapter_config\.json: base_model_name_or_path")
    nan = tmp_path / "nan"
    shutil.copytree(zoo / "f2", nan)
    shard = nan / "model-00003-of-00005.safetensors"
    sd = load_file(str(shard))
    k = sorted(sd)[0]
    sd[k][..., 0] = float("inf")
    save_file(sd, str(shard), metadata={"format": "pt"})
    _bad(zoo, tmp_path, capsys, ["-e", zoo / "f1", "-e", nan, "--base", zoo / "base"],
         rf"nan/model-00003-of-00005\.safetensors: tensor `{k}` contains inf")
    _bad(zoo, tmp_path, capsys, ["--method", "ties"], r"empty pool")
    _bad(zoo, tmp_path, capsys, [*l1, *l2, "--method", "tie"], r"unknown merge method `tie`")
    _bad(zoo, tmp_path, capsys, [*l1, *l2, "--method", "ties", "-p", "densty=0.5"], r"no parameter `densty`")
    _bad(zoo, tmp_path, capsys, [*l1, *l2, "--method", "ties", "-p", "density=1.5"], r"`density` must be in \(0, 1\]")
    _bad(zoo, tmp_path, capsys, [*l1, *l2, "--method", "breadcrumbs", "-p", "gamma=1"], r"`gamma` must be in \[0, 1\)")
    _bad(zoo, tmp_path, capsys, [*l1, *l2, "--method", "regmean", "-p", "alpha=2"], r"`alpha` must be in \[0, 1\]")
    rht = tmp_path / "rht.yaml"
    rht.write_text("rht:\n  enabled: true\n  gamma: 1.5\n")
    _bad(zoo, tmp_path, capsys, ["--config", rht, *l1, *l2], r"rht\.yaml.*`rht\.gamma`.*Got 1\.5")
    _bad(zoo, tmp_path, capsys, [*l1, *l2, "--weights", "1,2,3"], r"one weight per expert")
    _bad(zoo, tmp_path, capsys, [*l1, *l2, "--space", "concat", "--method", "ties"], r"concat.*linear")
    _bad(zoo, tmp_path, capsys, [*l1, *l2, "--space", "delta"], r"--rank")
    _bad(zoo, tmp_path, capsys, [*l1, *l2, "--space", "ab"], r"space `ab` needs equal LoRA ranks.*\[4, 8\]")
    _bad(zoo, tmp_path, capsys, [*l1, *l2, "--method", "fisher", "--base", zoo / "base", "--rank", "4"], r"merge\.data")
    binexp = tmp_path / "binexp"
    binexp.mkdir()
    shutil.copy(zoo / "l2" / "adapter_config.json", binexp)
    torch.save(load_file(str(zoo / "l2" / "adapter_model.safetensors")), binexp / "adapter_model.bin")
    _bad(zoo, tmp_path, capsys, [*l1, "-e", binexp, "--space", "concat"], r"binexp/adapter_model\.bin.*--allow-bin")
    code, _, err = _merge([*l1, "-e", binexp, "--space", "concat", "--allow-bin", "--out", tmp_path / "binok"], capsys)
    assert code == 0, err
    if not torch.cuda.is_available():
        _bad(zoo, tmp_path, capsys, [*l1, *l2, "--space", "concat", "--device", "cuda"], r"CUDA is not available")


def test_existing_output_kept_without_overwrite(zoo, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["-e", zoo / "l1", "-e", zoo / "l2", "--space", "concat", "--out", out]
    code, _, err = _merge(args, capsys)
    assert code == 2 and "already exists" in err and str(out) in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    before = sha256_tree(zoo / "l1")
    for target in (zoo / "l1", zoo / "l1" / "sub", zoo):  # the input itself, inside it, around it
        code, _, err = _merge(["-e", zoo / "l1", "-e", zoo / "l2", "--space", "concat", "--overwrite", "--out", target], capsys)
        assert code == 2 and "overlaps the input" in err, err
    assert sha256_tree(zoo / "l1") == before and not (zoo / "l1" / "sub").exists()
    code, _, err = _merge([*args, "--overwrite"], capsys)
    assert code == 0, err
    assert not (out / "keep.txt").exists() and (out / "adapter_model.safetensors").is_file()


def test_methods_lists_the_registry(capsys):
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    for name, m in all_methods().items():
        assert f"\n{name}" in "\n" + text
        for p in m.params:
            assert f"--param {p.name}=<{p.kind.__name__}>  default {p.default!r}" in text


def test_methods_prints_each_description_whole(capsys):
    """The docstring's first paragraph, joined onto one line: a sentence wrapped in the source is not cut."""
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    described = [ln.strip() for ln in text.splitlines() if ln.startswith("    ") and not ln.strip().startswith("--param")]
    assert len(described) == len(all_methods()) and all(d.endswith(".") for d in described), described
    assert ("drop the int(gamma N) largest magnitudes, keep the next int(density N) (mergekit's count), "
            "then `lambda * sum_i w_i tau_i`.") in text
    assert "keep the top `density` of each task vector by magnitude, divide by `density` (`rescale`)" in text


def test_pool_line_says_what_is_known_of_the_base(small_zoo, tmp_path, capsys):
    experts = ["-e", small_zoo.expert_dirs["brackets"], "-e", small_zoo.expert_dirs["majority"], "--rank", "4"]
    code, out, err = _merge([*experts, "--out", tmp_path / "a"], capsys)  # the zoo's adapters name no base
    assert code == 0, err
    assert out.splitlines()[0] == "pool: 2 lora expert(s), base not given (the adapters name none); 14 tensors", out
    code, out, err = _merge([*experts, "--base", small_zoo.base_dir, "--out", tmp_path / "b"], capsys)
    assert code == 0, err
    assert out.splitlines()[0] == f"pool: 2 lora expert(s) of base {small_zoo.base_dir}; 14 tensors", out


def test_python_m_evomerge_subprocess(zoo, tmp_path):
    res = subprocess.run([sys.executable, "-m", "evomerge", "merge", "-e", str(zoo / "l1"), "-e", str(tmp_path / "nope"),
                          "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "error:" in res.stderr and "nope" in res.stderr
    assert not (tmp_path / "o").exists()


def test_a_merged_adapter_names_its_base(small_zoo, tmp_path, capsys):
    """The zoo's adapters name no base (``base_model_name_or_path: null``): a merge of them with
    ``--base`` writes that base into the merged adapter's config (it copied the first expert's
    null); without ``--base`` nothing is known and it stays null."""
    experts = ["-e", small_zoo.expert_dirs["brackets"], "-e", small_zoo.expert_dirs["majority"]]
    assert json.loads((small_zoo.expert_dirs["brackets"] / "adapter_config.json").read_text())[
        "base_model_name_or_path"] is None
    code, _, err = _merge([*experts, "--space", "concat", "--base", small_zoo.base_dir, "--out", tmp_path / "b"], capsys)
    assert code == 0, err
    cfg = json.loads((tmp_path / "b" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(small_zoo.base_dir.resolve())
    man = json.loads((tmp_path / "b" / "evomerge_manifest.json").read_text())
    assert man["base_model_name_or_path"] == cfg["base_model_name_or_path"]  # one answer for both
    code, _, err = _merge([*experts, "--space", "concat", "--out", tmp_path / "n"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "n" / "adapter_config.json").read_text())["base_model_name_or_path"] is None


def test_experts_of_one_name_from_two_bases_get_the_real_refusal(zoo, small_zoo, tmp_path, capsys):
    """Two `brackets` adapters of bases of different widths: the shape mismatch is the refusal (before:
    "duplicate expert name(s)", and renaming would only have led to it)."""
    mine = tmp_path / "narrow" / "brackets"  # width 32, on the small zoo's modules (width 64)
    make_lora(zoo / "base", mine, seed=3, targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj"), base_name="")
    code, _, err = _merge(["-e", mine, "-e", small_zoo.expert_dirs["brackets"], "--method", "ties", "--rank", "4",
                           "--out", tmp_path / "o"], capsys)
    assert code == 2 and err.startswith(f"error: {small_zoo.expert_dirs['brackets'] / 'adapter_model.safetensors'}: "), err
    assert "adapts a weight of shape" in err and "duplicate" not in err
    assert not (tmp_path / "o").exists()


def test_duplicate_names_say_how_to_name_experts(small_zoo, tmp_path, capsys):
    """Two mergeable folders of one name: the refusal gives the config form that names them, which works."""
    other = tmp_path / "mine" / "brackets"  # the zoo's majority adapter, in a folder named like another expert
    shutil.copytree(small_zoo.expert_dirs["majority"], other)
    code, _, err = _merge(["-e", other, "-e", small_zoo.expert_dirs["brackets"], "--rank", "4", "--out", tmp_path / "o"],
                          capsys)
    assert code == 2 and err.startswith("error: duplicate expert name(s) ['brackets']: "), err
    assert "`experts: {experts: [{path: DIR, name: NAME}, ...]}` (docs/merging.md, `evomerge merge`)" in err
    cfg = tmp_path / "merge.yaml"
    cfg.write_text(f"experts:\n  experts: [{{path: {other}, name: mine}}, {{path: {small_zoo.expert_dirs['brackets']}, "
                   "name: zoo}]\n")
    code, out, err = _merge(["-c", cfg, "--rank", "4", "--out", tmp_path / "o"], capsys)
    assert code == 0, err
    assert [r["name"] for r in json.loads((tmp_path / "o" / "evomerge_manifest.json").read_text())["pool_stats"]] == ["mine", "zoo"]


def test_replacing_the_adapters_base_name_is_warned(small_zoo, tmp_path, capsys):
    """Adapters naming a hub base merged with `--base DIR`: the merged adapter names DIR, and one
    `warning:` line says which name it replaced (before: silently); none when they name DIR itself."""
    experts = []
    for t in ("brackets", "majority"):
        shutil.copytree(small_zoo.expert_dirs[t], tmp_path / t)
        c = json.loads((tmp_path / t / "adapter_config.json").read_text())
        c["base_model_name_or_path"] = "meta-llama/Llama-2-7b-hf"
        (tmp_path / t / "adapter_config.json").write_text(json.dumps(c))
        experts += ["-e", tmp_path / t]
    # refused after the pool is read (a data file that is not there): no warning about an adapter never written
    code, _, err = _merge([*experts, "--base", small_zoo.base_dir, "--method", "fisher", "--rank", "4", "--data",
                           tmp_path / "none.jsonl", "--out", tmp_path / "o"], capsys)
    assert code == 2 and err.splitlines() == [f"error: {tmp_path / 'none.jsonl'}: merge.data task file not found"], err
    code, _, err = _merge([*experts, "--base", small_zoo.base_dir, "--rank", "4", "--out", tmp_path / "o"], capsys)
    base = str(small_zoo.base_dir.resolve())
    assert code == 0, err
    assert err.splitlines() == [f"warning: the merged adapter's base_model_name_or_path is --base {base}, not "
                                "'meta-llama/Llama-2-7b-hf' as the experts' adapter_config.json name it"], err
    assert json.loads((tmp_path / "o" / "adapter_config.json").read_text())["base_model_name_or_path"] == base
    for t in ("brackets", "majority"):  # naming the base folder itself: nothing replaced, nothing said
        c = json.loads((tmp_path / t / "adapter_config.json").read_text())
        c["base_model_name_or_path"] = str(small_zoo.base_dir) + "/"
        (tmp_path / t / "adapter_config.json").write_text(json.dumps(c))
    code, _, err = _merge([*experts, "--base", small_zoo.base_dir, "--rank", "4", "--out", tmp_path / "p"], capsys)
    assert code == 0 and err == "", err
