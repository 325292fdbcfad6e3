"""Tiny models and experts built on the fly for the expert/merge tests (no tests here).

A 2-layer Llama with hidden size 32, a character-level tokenizer, real peft LoRA adapters
(random nonzero B) and full fine-tunes saved with ``save_pretrained``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

VOCAB = list("abcdefghijklmnopqrstuvwxyz0123456789 +=?.")


def tiny_config(**overrides):
    from transformers import LlamaConfig

    kw = dict(
        vocab_size=len(VOCAB) + 3, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    kw.update(overrides)
    return LlamaConfig(**kw)


def save_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    vocab.update({c: i + 3 for i, c in enumerate(VOCAB)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(str(folder))


def make_base(folder: Path, seed: int = 0, tokenizer: bool = True, **overrides):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(**overrides)).eval()
    model.save_pretrained(str(folder))
    if tokenizer:
        save_tokenizer(folder)
    return model


def load_base(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


def make_lora(base_dir: Path, out: Path, seed: int, r: int = 4, alpha: float = 8.0, use_rslora: bool = False,
              targets=("q_proj", "v_proj"), rank_pattern=None, alpha_pattern=None, base_name: str | None = None,
              b_scale: float = 0.1):
    """A real peft adapter with random nonzero B, saved with ``save_pretrained``."""
    from peft import LoraConfig, get_peft_model

    model = load_base(base_dir)
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), use_rslora=use_rslora,
                     rank_pattern=rank_pattern or {}, alpha_pattern=alpha_pattern or {}, lora_dropout=0.0,
                     task_type="CAUSAL_LM")
    pm = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * b_scale)
    pm.save_pretrained(str(out))
    # peft records the path the base was loaded from; pin it (or fake another base model)
    cfgp = out / "adapter_config.json"
    c = json.loads(cfgp.read_text())
    c["base_model_name_or_path"] = base_name if base_name is not None else str(base_dir)
    cfgp.write_text(json.dumps(c))
    return pm


def make_full(base_dir: Path, out: Path, seed: int, scale: float = 0.01, max_shard_size=None):
    """A full fine-tune: base weights plus seeded noise, saved with ``save_pretrained``."""
    model = load_base(base_dir)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    kw = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(str(out), **kw)
    return model


def copy_with_nan(src: Path, dst: Path, file: str, key_index: int = 0, at: int = 0) -> str:
    """A copy of expert ``src`` at ``dst`` whose ``file`` holds a NaN at flat position ``at`` of its
    ``key_index``-th tensor (in key order); that tensor's key."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    sd = load_file(str(dst / file))
    k = sorted(sd)[key_index]
    sd[k] = sd[k].clone()
    sd[k].view(-1)[at] = float("nan")
    save_file(sd, str(dst / file), metadata={"format": "pt"})
    return k


def state_dict_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def with_delta(base_model, delta: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """Logits of the base model with ``delta`` added to its weights, via functional_call."""
    from torch.func import functional_call

    params = {k: v.detach() for k, v in base_model.named_parameters()}
    for k, d in delta.items():
        params[k] = params[k] + d
    with torch.no_grad():
        return functional_call(base_model, params, args=(), kwargs={"input_ids": ids}).logits
