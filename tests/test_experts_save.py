"""Saving adapters and checkpoints (checked by peft/transformers loading them) and data statistics."""

from __future__ import annotations

import json

import pytest
import torch

from evomerge.errors import OutputExistsError
from evomerge.experts.checkpoint_io import CheckpointReader, plan_shards, save_full_checkpoint
from evomerge.experts.peft_io import load_peft_adapter, save_peft_adapter
from evomerge.experts.types import LoraModule
from test_experts_fixtures import load_base, logits, make_base, save_tokenizer, state_dict_of, with_delta

torch.set_num_threads(1)
IDS = torch.tensor([[1, 5, 9, 14, 20, 3, 7, 30, 11]])


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("save")
    make_base(root / "base")
    return root / "base"


def _modules(seed: int) -> dict[str, LoraModule]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, (o, i, r, s) in {
        "model.layers.0.self_attn.q_proj.weight": (32, 32, 3, 1.7),
        "model.layers.1.self_attn.v_proj.weight": (16, 32, 5, 0.4),
        "model.layers.1.mlp.down_proj.weight": (32, 64, 3, 2.0),
    }.items():
        out[name] = LoraModule(A=torch.randn(r, i, generator=g) * 0.2, B=torch.randn(o, r, generator=g) * 0.2, scale=s)
    return out


def test_saved_adapter_loads_in_peft_and_matches_delta(base_dir, tmp_path):
    from peft import PeftModel

    mods = _modules(0)
    out = save_peft_adapter(mods, tmp_path / "ad", {"base_model_name_or_path": str(base_dir), "task_type": "CAUSAL_LM"})
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 3 and cfg["rank_pattern"] == {"model.layers.1.self_attn.v_proj": 5}
    base = load_base(base_dir)
    want = with_delta(base, {k: m.delta() for k, m in mods.items()}, IDS)
    assert float((want - logits(base, IDS)).abs().max()) > 1e-3  # the delta matters
    pm = PeftModel.from_pretrained(load_base(base_dir), str(out))
    torch.testing.assert_close(logits(pm, IDS), want, atol=1e-5, rtol=1e-4)
    # and evomerge reads back the same deltas (scale folded into B)
    back = load_peft_adapter(out).modules
    for k, m in mods.items():
        assert back[k].scale == 1.0
        torch.testing.assert_close(back[k].delta(), m.delta(), atol=1e-6, rtol=1e-5)
    with pytest.raises(OutputExistsError, match="already exists"):
        save_peft_adapter(mods, out, {})
    save_peft_adapter(_modules(1), out, {}, overwrite=True)
    torch.testing.assert_close(load_peft_adapter(out).modules[k].delta(), _modules(1)[k].delta(), atol=1e-6, rtol=1e-5)


def test_plan_shards():
    assert plan_shards({"a": 4, "b": 4, "c": 9, "d": 1}, 8) == [["a", "b"], ["c"], ["d"]]
    assert plan_shards({"a": 1}, 8) == [["a"]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_full_checkpoint_sharded_loads_in_transformers(base_dir, tmp_path, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = CheckpointReader(base_dir)
    g = torch.Generator().manual_seed(3)
    delta = {k: torch.randn(src.shape(k), generator=g) * 0.01 for k in src.keys()}
    keys = src.keys()
    out = save_full_checkpoint(
        tmp_path / "full", keys, lambda k: src.get(k, torch.float32) + delta[k],
        shapes={k: src.shape(k) for k in keys}, dtypes={k: dtype for k in keys},
        base_dir=base_dir, max_shard_bytes=30_000,
    )
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and set(index["weight_map"]) == set(keys)
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=dtype)
    AutoTokenizer.from_pretrained(str(out))  # tokenizer files copied from the base
    sd = model.state_dict()
    base_sd = state_dict_of(load_base(base_dir))
    for k in keys:
        assert sd[k].dtype == dtype
        torch.testing.assert_close(sd[k], (base_sd[k] + delta[k]).to(dtype), atol=0, rtol=0)


def test_failed_write_leaves_nothing(base_dir, tmp_path):
    src = CheckpointReader(base_dir)
    keys = src.keys()

    def boom(k):
        if k == keys[-1]:
            raise RuntimeError("disk full")
        return src.get(k)

    with pytest.raises(RuntimeError, match="disk full"):
        save_full_checkpoint(tmp_path / "x", keys, boom, shapes={k: src.shape(k) for k in keys},
                             dtypes={k: src.dtype(k) for k in keys}, max_shard_bytes=30_000)
    assert list(tmp_path.iterdir()) == []


# --- data statistics ---------------------------------------------------------------------------

EXAMPLES = [{"prompt": "ab+c=", "answer": "12"}, {"prompt": "zz?", "answer": "9 9"}, {"prompt": "q", "answer": "x"}]


def _tokenizer(tmp_path):
    from transformers import AutoTokenizer

    save_tokenizer(tmp_path)
    return AutoTokenizer.from_pretrained(str(tmp_path))


def test_fisher_matches_per_example_backward(base_dir, tmp_path):
    from evomerge.experts.statistics import fisher_diagonals

    tok = _tokenizer(tmp_path)
    model = load_base(base_dir)
    keys = ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.up_proj.weight"]
    g = torch.Generator().manual_seed(0)
    expert = {k: torch.randn(dict(model.named_parameters())[k].shape, generator=g) * 0.05 for k in keys}
    got = fisher_diagonals(model, expert, EXAMPLES, tok, n=3)
    # independent: a real model holding base+expert weights, HF's own loss with labels
    ref_model = load_base(base_dir)
    with torch.no_grad():
        for k, d in expert.items():
            dict(ref_model.named_parameters())[k].add_(d)
    acc = {k: torch.zeros_like(v) for k, v in expert.items()}
    for ex in EXAMPLES:
        p = tok(ex["prompt"])["input_ids"]
        a = tok(ex["answer"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([p + a])
        labels = torch.tensor([[-100] * len(p) + a])
        ref_model.zero_grad()
        loss = ref_model(input_ids=ids, labels=labels).loss * len(a)  # mean NLL -> summed log-lik
        loss.backward()
        for k in keys:
            acc[k] += dict(ref_model.named_parameters())[k].grad ** 2
    for k in keys:
        assert float(got[k].abs().max()) > 0
        torch.testing.assert_close(got[k], acc[k] / 3, atol=1e-9, rtol=1e-4)
    # base weights untouched
    torch.testing.assert_close(state_dict_of(model), state_dict_of(load_base(base_dir)))


def test_gram_matches_layer_inputs(base_dir, tmp_path):
    from evomerge.experts.statistics import gram_matrices

    tok = _tokenizer(tmp_path)
    model = load_base(base_dir)
    key = "model.layers.0.self_attn.q_proj.weight"
    expert = {key: torch.full((32, 32), 0.01), "model.layers.0.input_layernorm.weight": torch.full((32,), 0.3)}
    got = gram_matrices(model, expert, EXAMPLES[:2], tok, keys=[key, "model.layers.0.input_layernorm.weight"])
    assert set(got) == {key}  # only Linear layers have a Gram matrix
    # independent: q_proj of layer 0 sees input_layernorm(embeddings); norm weight shifted by the expert
    emb = model.model.embed_tokens.weight
    w = model.model.layers[0].input_layernorm.weight + 0.3
    xs = []
    for ex in EXAMPLES[:2]:
        p = tok(ex["prompt"])["input_ids"]
        a = tok(ex["answer"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        h = emb[torch.tensor(p + a)]
        eps = model.config.rms_norm_eps
        xs.append(h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * w)
    x = torch.cat(xs).detach()
    torch.testing.assert_close(got[key], x.T @ x / x.shape[0], atol=1e-6, rtol=1e-4)


def test_gpt2_conv1d_fan_in_fan_out_roundtrip(tmp_path):
    """GPT-2 stores weights [in, out] (Conv1D): peft's fan_in_fan_out adapters load and save."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    from evomerge.experts.pool import load_pool

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=32, n_embd=32, n_layer=2, n_head=4)).save_pretrained(
        str(tmp_path / "base"))
    base = GPT2LMHeadModel.from_pretrained(str(tmp_path / "base")).eval()
    pm = get_peft_model(base, LoraConfig(r=4, lora_alpha=6, target_modules=["c_attn"], fan_in_fan_out=True))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.2)
    pm.save_pretrained(str(tmp_path / "ad"))
    pool = load_pool([tmp_path / "ad"], base=tmp_path / "base")
    k = "transformer.h.0.attn.c_attn.weight"
    assert pool.shape(k) == (32, 96) and pool.lora(0)[k].fan_in_fan_out
    fresh = lambda: GPT2LMHeadModel.from_pretrained(str(tmp_path / "base")).eval()  # noqa: E731
    sd0 = state_dict_of(fresh())
    merged = PeftModel.from_pretrained(fresh(), str(tmp_path / "ad")).merge_and_unload().state_dict()
    for key in pool.keys():
        torch.testing.assert_close(pool.stacked(key)[0], merged[key] - sd0[key], atol=1e-6, rtol=1e-5)
    ids = torch.tensor([[1, 7, 3, 9, 22]])
    out = save_peft_adapter(pool.lora(0), tmp_path / "re", pool.adapter_config(0))
    assert json.loads((out / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    want = with_delta(fresh(), pool.task_vector(0), ids)
    torch.testing.assert_close(logits(PeftModel.from_pretrained(fresh(), str(out)), ids), want, atol=1e-5, rtol=1e-4)
