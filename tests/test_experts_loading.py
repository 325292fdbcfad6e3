"""Loading and validating expert pools: real peft adapters and save_pretrained checkpoints."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from evomerge.errors import ExpertLoadError
from evomerge.experts.checkpoint_io import CheckpointReader
from evomerge.experts.peft_io import load_peft_adapter, peft_key_to_weight, weight_to_peft_key
from evomerge.experts.pool import load_pool
from test_experts_fixtures import copy_with_nan, load_base, make_base, make_full, make_lora, state_dict_of

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    make_base(root / "base", tokenizer=False)
    make_lora(root / "base", root / "l1", seed=1, r=4, alpha=8)
    make_lora(root / "base", root / "l2", seed=2, r=8, alpha=8, use_rslora=True)
    make_lora(root / "base", root / "l3", seed=3, r=4, alpha=8,
              rank_pattern={"model.layers.0.self_attn.q_proj": 2}, alpha_pattern={"v_proj": 3})
    make_full(root / "base", root / "f1", seed=1)
    make_full(root / "base", root / "f2", seed=2, max_shard_size="20KB")
    return root


def _peft_merged_delta(root, name):
    """Task vector computed by peft itself: merge_and_unload minus base."""
    from peft import PeftModel

    base = load_base(root / "base")
    sd0 = state_dict_of(base)
    merged = PeftModel.from_pretrained(base, str(root / name)).merge_and_unload().state_dict()
    return {k: merged[k] - sd0[k] for k in sd0}


def test_lora_task_vectors_match_peft_merge(zoo):
    pool = load_pool([zoo / "l1", zoo / "l2", zoo / "l3"], base=zoo / "base")
    assert pool.kind == "lora" and pool.names == ["l1", "l2", "l3"]
    assert pool.keys() == sorted(f"model.layers.{i}.self_attn.{m}_proj.weight" for i in range(2) for m in "qv")
    for i, name in enumerate(pool.names):
        ref = _peft_merged_delta(zoo, name)
        tv = pool.task_vector(i)
        for k, d in ref.items():
            if k in tv:
                torch.testing.assert_close(tv[k], d, atol=1e-6, rtol=1e-5)
            else:
                assert float(d.abs().max()) == 0.0
    # stacked streams the same numbers, one key at a time
    k = pool.keys()[0]
    st = pool.stacked(k)
    assert st.shape == (3, 32, 32)
    torch.testing.assert_close(st[1], pool.task_vector(1)[k])


def test_scales_rslora_rank_and_alpha_patterns(zoo):
    l1 = load_peft_adapter(zoo / "l1").modules
    l2 = load_peft_adapter(zoo / "l2").modules
    l3 = load_peft_adapter(zoo / "l3").modules
    q0, v0, q1 = (f"model.layers.{i}.self_attn.{m}_proj.weight" for i, m in ((0, "q"), (0, "v"), (1, "q")))
    assert all(m.scale == 2.0 and m.rank == 4 for m in l1.values())
    assert all(m.scale == pytest.approx(8 / math.sqrt(8)) and m.rank == 8 for m in l2.values())
    assert l3[q0].rank == 2 and l3[q0].scale == 4.0  # rank_pattern: 8 / 2
    assert l3[v0].rank == 4 and l3[v0].scale == 0.75  # alpha_pattern: 3 / 4
    assert l3[q1].rank == 4 and l3[q1].scale == 2.0


def test_key_mapping_with_adapter_name(zoo, tmp_path):
    from safetensors.torch import load_file, save_file

    assert peft_key_to_weight("base_model.model.model.layers.0.mlp.up_proj.lora_B.default.weight") == (
        "model.layers.0.mlp.up_proj.weight", "B")
    assert weight_to_peft_key("a.b.weight", "A") == "base_model.model.a.b.lora_A.weight"
    shutil.copytree(zoo / "l1", tmp_path / "named")
    f = tmp_path / "named" / "adapter_model.safetensors"
    sd = load_file(str(f))
    save_file({k.replace(".weight", ".default.weight"): v for k, v in sd.items()}, str(f))
    a = load_peft_adapter(tmp_path / "named").modules
    b = load_peft_adapter(zoo / "l1").modules
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k].delta(), b[k].delta())


def test_full_task_vectors_single_and_sharded(zoo):
    pool = load_pool([zoo / "f1", zoo / "f2"], base=zoo / "base")
    assert pool.kind == "full"
    assert len(CheckpointReader(zoo / "f2").files()) > 1  # really sharded
    base = state_dict_of(load_base(zoo / "base"))
    for i, name in enumerate(("f1", "f2")):
        sd = state_dict_of(load_base(zoo / name))
        assert set(pool.keys()) == set(base)
        for k in pool.keys():
            torch.testing.assert_close(pool.stacked(k)[i], sd[k] - base[k], atol=0, rtol=0)


def test_stats_norm_sparsity_and_summary(zoo, tmp_path):
    from safetensors.torch import load_file, save_file

    # a full fine-tune that changed only the attention weights: sparsity is the rest's share
    shutil.copytree(zoo / "base", tmp_path / "part")
    f1 = load_file(str(zoo / "f1" / "model.safetensors"))
    sd = load_file(str(tmp_path / "part" / "model.safetensors"))
    changed = [k for k in sd if "self_attn" in k]
    for k in changed:
        sd[k] = f1[k]
    save_file(sd, str(tmp_path / "part" / "model.safetensors"), metadata={"format": "pt"})
    pool = load_pool([zoo / "f1", tmp_path / "part"], base=zoo / "base")
    s = pool.stats()
    base = load_file(str(zoo / "base" / "model.safetensors"))
    total = sum(v.numel() for v in base.values())
    ref_norm = math.sqrt(sum(float((f1[k] - base[k]).double().pow(2).sum()) for k in base))
    assert s[0]["norm"] == pytest.approx(ref_norm, rel=1e-6)
    assert s[0]["delta_params"] == total
    assert s[1]["sparsity"] == pytest.approx(1 - sum(base[k].numel() for k in changed) / total)
    text = pool.summary(s)
    assert "2 full expert(s)" in text and "part" in text

    lp = load_pool([zoo / "l1", zoo / "l3"])
    ls = lp.stats()
    assert ls[0]["ranks"] == [4] and ls[1]["ranks"] == [2, 4]
    assert ls[1]["lora_params"] == sum(m.A.numel() + m.B.numel() for m in lp.lora(1).values())


def test_bin_refused_unless_allowed(zoo, tmp_path):
    from safetensors.torch import load_file

    d = tmp_path / "binexp"
    d.mkdir()
    shutil.copy(zoo / "l1" / "adapter_config.json", d)
    torch.save(load_file(str(zoo / "l1" / "adapter_model.safetensors")), d / "adapter_model.bin")
    with pytest.raises(ExpertLoadError, match=r"adapter_model\.bin.*--allow-bin"):
        load_pool([d])
    pool = load_pool([d], allow_bin=True)
    ref = load_pool([zoo / "l1"])
    torch.testing.assert_close(pool.stacked(pool.keys()[0]), ref.stacked(ref.keys()[0]))
    # a full fine-tune saved as pytorch_model.bin
    fb = tmp_path / "fullbin"
    fb.mkdir()
    shutil.copy(zoo / "f1" / "config.json", fb)
    torch.save(load_file(str(zoo / "f1" / "model.safetensors")), fb / "pytorch_model.bin")
    with pytest.raises(ExpertLoadError, match=r"fullbin/pytorch_model\.bin.*--allow-bin"):
        load_pool([fb], base=zoo / "base")
    got = load_pool([fb], base=zoo / "base", allow_bin=True)
    ref = load_pool([zoo / "f1"], base=zoo / "base")
    for k in ref.keys():
        torch.testing.assert_close(got.stacked(k), ref.stacked(k), atol=0, rtol=0)


# --- bad inputs: each names the file at fault -------------------------------------------------


def _corrupt(src, dst, file):
    shutil.copytree(src, dst)
    data = (dst / file).read_bytes()
    (dst / file).write_bytes(data[: len(data) // 2])
    return dst


def test_bad_lora_inputs(zoo, tmp_path):
    with pytest.raises(ExpertLoadError, match="empty pool"):
        load_pool([])
    with pytest.raises(ExpertLoadError, match="nope.*not found"):
        load_pool([zoo / "l1", tmp_path / "nope"])
    bad = _corrupt(zoo / "l1", tmp_path / "corrupt", "adapter_model.safetensors")
    with pytest.raises(ExpertLoadError, match=r"corrupt/adapter_model\.safetensors.*corrupt"):
        load_pool([zoo / "l2", bad])
    nan = tmp_path / "nan"
    k = copy_with_nan(zoo / "l1", nan, "adapter_model.safetensors", key_index=1, at=3)
    with pytest.raises(ExpertLoadError, match=rf"nan/adapter_model\.safetensors: tensor `{k}` contains NaN"):
        load_pool([zoo / "l2", nan])
    make_lora(zoo / "base", tmp_path / "qk", seed=5, targets=("q_proj", "k_proj"))
    with pytest.raises(ExpertLoadError, match=r"qk/adapter_model\.safetensors: target modules differ"):
        load_pool([zoo / "l1", tmp_path / "qk"])
    make_lora(zoo / "base", tmp_path / "other", seed=6, base_name="meta/other-model")
    with pytest.raises(ExpertLoadError, match=r"other/adapter_config\.json: base_model_name_or_path"):
        load_pool([zoo / "l1", tmp_path / "other"])
    make_base(tmp_path / "wide", tokenizer=False, hidden_size=48, intermediate_size=64)
    make_lora(tmp_path / "wide", tmp_path / "wide_l", seed=7, base_name=str(zoo / "base"))
    with pytest.raises(ExpertLoadError, match=r"wide_l/adapter_model\.safetensors: .*shape"):
        load_pool([zoo / "l1", tmp_path / "wide_l"])
    with pytest.raises(ExpertLoadError, match=r"wide_l/adapter_model\.safetensors: .*base .*has"):
        load_pool([tmp_path / "wide_l"], base=zoo / "base")
    with pytest.raises(ExpertLoadError, match="cannot mix LoRA"):
        load_pool([zoo / "l1", zoo / "f1"], base=zoo / "base")
    with pytest.raises(ExpertLoadError, match="listed twice"):
        load_pool([zoo / "l1", zoo / "l1"])
    with pytest.raises(ExpertLoadError, match=r"^duplicate expert name\(s\) \['a'\]: give each expert a distinct name "):
        load_pool([zoo / "l1", zoo / "l2"], names=["a", "a"])  # names given, not folders': the fix leads


def test_bad_full_inputs(zoo, tmp_path):
    with pytest.raises(ExpertLoadError, match="need the base checkpoint"):
        load_pool([zoo / "f1"])
    shard = "model-00002-of-00005.safetensors"
    bad = _corrupt(zoo / "f2", tmp_path / "corrupt", shard)
    with pytest.raises(ExpertLoadError, match=rf"corrupt/{shard}"):
        load_pool([zoo / "f1", bad], base=zoo / "base")
    miss = tmp_path / "missing"
    shutil.copytree(zoo / "f2", miss)
    (miss / shard).unlink()
    with pytest.raises(ExpertLoadError, match=rf"missing/{shard}: shard listed .* not found"):
        load_pool([miss], base=zoo / "base")
    nan = tmp_path / "nan"
    k = copy_with_nan(zoo / "f1", nan, "model.safetensors", key_index=1, at=3)
    with pytest.raises(ExpertLoadError, match=rf"nan/model\.safetensors: tensor `{k}` contains NaN"):
        load_pool([zoo / "f2", nan], base=zoo / "base")
    diff = tmp_path / "diff"
    shutil.copytree(zoo / "f1", diff)
    cfg = json.loads((diff / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (diff / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ExpertLoadError, match=r"diff/config\.json: `num_hidden_layers` is 3"):
        load_pool([diff], base=zoo / "base")
    make_base(tmp_path / "wide", tokenizer=False, intermediate_size=48)
    with pytest.raises(ExpertLoadError, match=r"wide/config\.json: `intermediate_size`"):
        load_pool([zoo / "f1", tmp_path / "wide"], base=zoo / "base")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ExpertLoadError, match="empty: neither a peft adapter"):
        load_pool([empty], base=zoo / "base")
