"""How an expert's base model is checked, on adapters saved with peft from real folders.

* an adapter whose ``base_model_name_or_path`` is null (the shipped zoo's) names no base: it defers
  to the adapters that name one and to ``--base`` (the shapes are still checked against it);
* ``evaluate`` applies the base rule of ``merge`` (one function): an adapter of another local model
  of the same architecture, or two adapters naming two bases, are refused by both, naming the file;
* a relative name is reported with where it was read from (the working folder) and where it names
  a model folder (above the adapter), a bare ``base`` included;
* with ``--base``, each adapter is checked against the base before the adapters against each other,
  so a corrupt adapter is named, not the healthy one it is compared with;
* the target-modules mismatch says how many modules differ;
* a full fine-tune of another base of the same ``config.json`` is merged with a warning in the pool
  summary (its task-vector norm is far from the others').
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from _cli_helpers import one_error, run_cli
from evomerge.errors import ExpertLoadError
from evomerge.experts.pool import load_pool

torch.set_num_threads(1)

QV = ("q_proj", "v_proj")
ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def peft_adapter(base: str | Path, out: Path, targets=QV, seed: int = 0) -> Path:
    """A LoRA adapter of the model in folder ``base``, saved by peft (which writes ``base`` as
    given into ``base_model_name_or_path``); random A and B, so its task vector is not zero."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    pm = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=list(targets), lora_dropout=0.0,
                                          init_lora_weights=False, task_type="CAUSAL_LM"))
    pm.save_pretrained(str(out))
    return out


def other_model(base: Path, out: Path, seed: int = 1) -> Path:
    """Another model of ``base``'s architecture (its very config.json), freshly initialised."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(base))).save_pretrained(str(out))
    shutil.copyfile(base / "config.json", out / "config.json")
    return out


def set_base_name(adapter: Path, name) -> None:
    f = adapter / "adapter_config.json"
    cfg = json.loads(f.read_text())
    cfg["base_model_name_or_path"] = name
    f.write_text(json.dumps(cfg))


@pytest.fixture(scope="module")
def work(small_zoo, tmp_path_factory):
    """``mine``: an adapter of the zoo's base (peft wrote its absolute path); ``wide``: a base of
    another width; ``other``: another model with the zoo base's config.json; ``ob``: an adapter of it."""
    root = tmp_path_factory.mktemp("baserule")
    peft_adapter(small_zoo.base_dir, root / "mine", targets=ALL)
    peft_adapter(small_zoo.base_dir, root / "mine_qv", seed=1)
    other_model(small_zoo.base_dir, root / "other")
    peft_adapter(root / "other", root / "ob", seed=2)
    (root / "t.jsonl").write_text(json.dumps({"prompt": "12", "answer": "21"}) + "\n")
    return root


def test_the_zoo_adapters_name_no_base(small_zoo):
    for d in small_zoo.expert_dirs.values():
        assert json.loads((d / "adapter_config.json").read_text())["base_model_name_or_path"] is None


def test_an_adapter_naming_no_base_merges_with_one_naming_the_base(small_zoo, work, tmp_path, capsys):
    zoo_ad, mine = small_zoo.expert_dirs["rev_digits"], work / "mine"
    assert json.loads((mine / "adapter_config.json").read_text())["base_model_name_or_path"] == str(small_zoo.base_dir)
    for i, (pair, base) in enumerate((((mine, zoo_ad), True), ((zoo_ad, mine), True), ((zoo_ad, mine), False))):
        out = tmp_path / f"m{i}"
        args = ["merge", "-q", "-e", pair[0], "-e", pair[1], "--method", "ties", "--rank", "8", "--out", out]
        code, _, err = run_cli([*args, *(["--base", small_zoo.base_dir] if base else [])], capsys)
        assert code == 0, err
        manifest = json.loads((out / "evomerge_manifest.json").read_text())
        assert manifest["base_model_name_or_path"] == str(small_zoo.base_dir)  # the one base named, whatever the order
    blank = tmp_path / "blank"
    shutil.copytree(mine, blank)
    set_base_name(blank, "  ")
    assert load_pool([zoo_ad, blank, mine], base=small_zoo.base_dir).base_model_name() == str(small_zoo.base_dir)


def test_an_adapter_naming_no_base_is_still_checked_against_base(small_zoo, work, tmp_path, capsys):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(str(small_zoo.base_dir))
    cfg.hidden_size, cfg.head_dim = 96, 24
    AutoModelForCausalLM.from_config(cfg).save_pretrained(str(tmp_path / "wide"))
    w = peft_adapter(tmp_path / "wide", tmp_path / "w")
    set_base_name(w, None)
    line = one_error(["merge", "-q", "--base", small_zoo.base_dir, "-e", work / "mine_qv", "-e", w, "--out",
                      tmp_path / "o"], capsys)
    assert line == (f"error: {w}/adapter_model.safetensors: `model.layers.0.self_attn.q_proj.weight` adapts shape "
                    f"(96, 96) but the base {small_zoo.base_dir} has (64, 64) (different base model?)")


def test_evaluate_refuses_an_adapter_of_another_base_as_merge_does(small_zoo, work, tmp_path, capsys):
    ob, other = work / "ob", work / "other"
    want = (f"error: {ob}/adapter_config.json: base_model_name_or_path '{other}' is another model than --base "
            f"{small_zoo.base_dir} (tensor `model.embed_tokens.weight` holds other values; the adapter was trained "
            "on that model: give it as --base, or merge adapters of --base)")
    base = ["--base", small_zoo.base_dir]
    ev = ["evaluate", *base, "--task", f"t={work / 't.jsonl'}", "--max-samples", "2"]
    assert one_error([*ev, "-e", ob], capsys) == want
    assert one_error([*ev, "-e", work / "mine_qv", "-e", ob], capsys) == want
    assert one_error(["merge", "-q", *base, "-e", ob, "--out", tmp_path / "o"], capsys) == want
    assert one_error(["merge", "-q", *base, "-e", work / "mine_qv", "-e", ob, "--out", tmp_path / "o"], capsys) == want
    assert not (tmp_path / "o").exists()
    # given as --base, the model it names is its base
    code, _, err = run_cli(["merge", "-q", "--base", other, "-e", ob, "--out", tmp_path / "ok"], capsys)
    assert code == 0, err


def test_evaluate_refuses_two_adapters_naming_two_bases_as_merge_does(small_zoo, work, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(work / "mine_qv", a)
    shutil.copytree(work / "mine_qv", b)
    set_base_name(a, "org/model-a")
    set_base_name(b, "org/model-b")
    want = (f"error: {b}/adapter_config.json: base_model_name_or_path 'org/model-b' differs from 'org/model-a' in "
            f"{a}/adapter_config.json (experts must share one base model)")
    base = ["--base", small_zoo.base_dir]
    assert one_error(["evaluate", *base, "--task", f"t={work / 't.jsonl'}", "-e", a, "-e", b], capsys) == want
    assert one_error(["merge", "-q", *base, "-e", a, "-e", b, "--out", tmp_path / "o"], capsys) == want
    assert one_error(["analyze", *base, "-e", a, "-e", b, "--out", tmp_path / "o"], capsys) == want


def test_an_adapter_of_a_copy_of_the_base_is_an_adapter_of_the_base(small_zoo, work, tmp_path, capsys):
    shutil.copytree(small_zoo.base_dir, tmp_path / "copy")
    ad = peft_adapter(tmp_path / "copy", tmp_path / "c")
    code, out, err = run_cli(["evaluate", "--base", small_zoo.base_dir, "--task", f"t={work / 't.jsonl'}", "-e", ad,
                              "--max-samples", "2"], capsys)
    assert code == 0 and re.search(r"^c +\d", out, re.M), err + out
    code, _, err = run_cli(["merge", "-q", "--base", small_zoo.base_dir, "-e", ad, "--out", tmp_path / "m"], capsys)
    assert code == 0, err


def test_a_bare_relative_name_says_where_it_was_read_from(small_zoo, work, tmp_path, capsys, monkeypatch):
    root = tmp_path / "run"
    shutil.copytree(small_zoo.base_dir, root / "base")
    monkeypatch.chdir(root)
    bare = peft_adapter("base", root / "experts" / "bare")  # peft writes "base", as given
    assert json.loads((bare / "adapter_config.json").read_text())["base_model_name_or_path"] == "base"
    mine = work / "mine_qv"
    args = ["merge", "-q", "-e", bare, "-e", mine, "--out", tmp_path / "o"]
    # from the folder it was trained in, "base" is that folder (a copy of the zoo's base, another folder)
    assert one_error(args, capsys) == (
        f"error: {mine}/adapter_config.json: base_model_name_or_path '{small_zoo.base_dir}' differs from 'base' in "
        f"{bare}/adapter_config.json (experts must share one base model; 'base' is read from the working folder "
        f"{root}: {root}/base)")
    # from elsewhere it names no folder (a hub id, as transformers would read it), and the line says where it does
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert one_error(args, capsys) == (
        f"error: {mine}/adapter_config.json: base_model_name_or_path '{small_zoo.base_dir}' differs from 'base' in "
        f"{bare}/adapter_config.json (experts must share one base model; 'base' is no folder in the working folder "
        f"{tmp_path / 'elsewhere'}, so it is read as a hub id; read from {root} (the adapter's folder or one above "
        f"it) it is the model folder {root}/base: run evomerge from {root}, or write that absolute path into "
        f"{bare}/adapter_config.json)")
    # a name that can only be a path, read from the working folder where it is nothing
    set_base_name(bare, "../base")
    assert one_error(args, capsys) == (
        f"error: {mine}/adapter_config.json: base_model_name_or_path '{small_zoo.base_dir}' differs from '../base' in "
        f"{bare}/adapter_config.json (experts must share one base model; a relative path is read from the working "
        f"folder ({tmp_path / 'elsewhere'}), where '../base' is no folder; read from {root / 'experts'} (the adapter's "
        f"folder or one above it) it is the model folder {root}/base: run evomerge from {root / 'experts'}, or write "
        f"that absolute path into {bare}/adapter_config.json)")
    # against --base: a relative name that is another model is refused saying what it was read as
    other = other_model(small_zoo.base_dir, tmp_path / "elsewhere" / "base")
    set_base_name(bare, "base")
    assert one_error(["merge", "-q", "--base", small_zoo.base_dir, "-e", bare, "--out", tmp_path / "o"], capsys) == (
        f"error: {bare}/adapter_config.json: base_model_name_or_path 'base' ('base' is read from the working folder "
        f"{tmp_path / 'elsewhere'}: {other}) is another model than --base {small_zoo.base_dir} (tensor "
        "`model.embed_tokens.weight` holds other values; the adapter was trained on that model: give it as --base, "
        "or merge adapters of --base)")


def test_with_base_a_corrupt_adapter_is_named_not_the_healthy_one(small_zoo, work, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(work / "mine_qv", bad)
    sd = load_file(str(bad / "adapter_model.safetensors"))
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    sd[key] = sd[key][:, :32].contiguous()  # its factors now adapt a (64, 32) weight
    save_file(sd, str(bad / "adapter_model.safetensors"), metadata={"format": "pt"})
    line = one_error(["merge", "-q", "--base", small_zoo.base_dir, "-e", bad, "-e", work / "mine_qv", "--rank", "8",
                      "--out", tmp_path / "o"], capsys)
    assert line == (f"error: {bad}/adapter_model.safetensors: `model.layers.0.self_attn.q_proj.weight` adapts shape "
                    f"(64, 32) but the base {small_zoo.base_dir} has (64, 64) (different base model?)")


def test_the_target_modules_mismatch_says_how_many(small_zoo, work, tmp_path, capsys):
    qv, full = work / "mine_qv", work / "mine"
    line = one_error(["merge", "-q", "--base", small_zoo.base_dir, "-e", qv, "-e", full, "--rank", "8", "--out",
                      tmp_path / "o"], capsys)
    extra = ["model.layers.0.mlp.down_proj.weight", "model.layers.0.mlp.gate_proj.weight",
             "model.layers.0.mlp.up_proj.weight"]
    assert line == (f"error: {full}/adapter_model.safetensors: target modules differ from {qv}/adapter_model.safetensors "
                    f"(extra: {extra} ... (10 in all); missing: none)")
    qkv = peft_adapter(small_zoo.base_dir, tmp_path / "qkv", targets=("q_proj", "k_proj", "v_proj"))
    with pytest.raises(ExpertLoadError) as err:  # a short list is given whole
        load_pool([qkv, qv])
    assert str(err.value) == (
        f"{qv}/adapter_model.safetensors: target modules differ from {qkv}/adapter_model.safetensors (extra: none; "
        "missing: ['model.layers.0.self_attn.k_proj.weight', 'model.layers.1.self_attn.k_proj.weight'])")


def test_a_full_fine_tune_of_another_base_is_pointed_out_in_the_summary(small_zoo, work, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(work / "other"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    model.save_pretrained(str(tmp_path / "stranger"))
    full = [small_zoo.full_dirs["rev_digits"], small_zoo.full_dirs["brackets"]]
    args = ["merge", "-q", "--base", small_zoo.base_dir, "--method", "task_arithmetic"]
    code, out, err = run_cli([*args, *sum((["-e", f] for f in full), []), "--out", tmp_path / "ok"], capsys)
    assert code == 0 and "warning" not in out + err, out + err
    code, out, err = run_cli([*args, "-e", full[0], "-e", tmp_path / "stranger", "-e", full[1], "--out", tmp_path / "m"],
                             capsys)
    assert code == 0, err  # a warning, not a refusal
    warned = [ln for ln in out.splitlines() if "warning" in ln]
    assert len(warned) == 1 and re.fullmatch(
        r"  warning: `stranger`: task-vector norm [\d.]+ is \d+\.\dx above the pool's median [\d.]+: a fine-tune of "
        r"another base model with the same config\.json\?", warned[0]), out
