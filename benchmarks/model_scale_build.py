"""The files ``model_scale.py`` measures, as a user would have them: a random-initialised
Llama at a named size with a tokenizer, rank-r LoRA experts as peft adapters, task files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

# name -> LlamaConfig fields. Released shapes where named; "tiny" is the CPU test's size (a real
# 32k vocabulary so that the base dominates the actor's memory), "50m" a Llama-2-vocabulary
# Llama at head dim 64 (no released checkpoint has exactly this shape).
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                 intermediate_size=172, vocab_size=32000),
    "50m": dict(hidden_size=512, num_hidden_layers=10, num_attention_heads=8, num_key_value_heads=8,
                intermediate_size=1536, vocab_size=32000),
    # SmolLM-135M and SmolLM2-360M (LlamaForCausalLM checkpoints)
    "135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                 intermediate_size=1536, vocab_size=49152),
    "360m": dict(hidden_size=960, num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5,
                 intermediate_size=2560, vocab_size=49152),
    # Llama-3.2-1B; TinyLlama-1.1B; Gemma-2-2B's widths in a Llama block (head dim 256)
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192, vocab_size=128256),
    "1.1b": dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                 intermediate_size=5632, vocab_size=32000),
    "2b": dict(hidden_size=2304, num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4,
               head_dim=256, intermediate_size=9216, vocab_size=256000),
}
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TASKS = ("rev_digits", "sort_digits", "brackets", "majority")


MARKER = "workspace.json"  # written last: its presence means the files under root are complete
_KEYS = ("size", "experts", "dtype", "tasks", "samples", "rank", "rel_norm", "seed")


def load_or_build_workspace(root: Path, args) -> tuple[dict[str, Any], bool]:
    """:func:`build_workspace`, or the one already complete under ``root`` for the same
    arguments (``--workdir`` reused: the 1b files take ~40 s to write on a GPU machine);
    second value: whether it was reused. A folder with other arguments or without the marker
    is rebuilt (its base, experts and tasks replaced)."""
    import shutil

    want = {k: getattr(args, k) for k in _KEYS}
    marker = root / MARKER
    if marker.is_file():
        got = json.loads(marker.read_text())
        if got.get("args") == want:
            ws = got["workspace"]
            ws["base"] = Path(ws["base"])
            ws["experts"] = [Path(x) for x in ws["experts"]]
            ws["tasks"] = {t: Path(x) for t, x in ws["tasks"].items()}
            return ws, True
        marker.unlink()
    for sub in ("base", "experts", "tasks"):
        shutil.rmtree(root / sub, ignore_errors=True)
    ws = build_workspace(root, args)
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"args": want, "workspace": ws}, default=str, indent=1))
    tmp.replace(marker)
    return ws, False


# ---------------------------------------------------------------- the files a user would have
def build_workspace(root: Path, args) -> dict[str, Any]:
    """Base model, ``args.experts`` LoRA adapters and task files under ``root``; their byte counts."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from evomerge.experts.peft_io import save_peft_adapter
    from evomerge.experts.types import LoraModule
    from evomerge.zoo.tasks import TASKS as GEN

    tasks = list(TASKS[: args.tasks])
    tok = _tokenizer(tasks, SIZES[args.size]["vocab_size"])
    dtype = getattr(torch, args.dtype)
    cfg = LlamaConfig(**SIZES[args.size], max_position_embeddings=128, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(cfg).to(dtype).eval()
    base = root / "base"
    model.save_pretrained(base)
    tok.save_pretrained(base)
    n_params = sum(p.numel() for p in model.parameters())
    linears = {f"{n}.weight": m.weight for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in TARGETS}
    r, alpha = args.rank, 2 * args.rank
    wnorm = {key: float(w.detach().float().norm()) for key, w in linears.items()}  # once, not per expert
    experts = []
    for i in range(args.experts):
        g = torch.Generator().manual_seed(args.seed * 1000 + i + 1)
        mods = {}
        for key, w in linears.items():
            out_f, in_f = w.shape
            a = (torch.rand(r, in_f, generator=g) * 2 - 1) / math.sqrt(in_f)  # peft: kaiming_uniform(a=sqrt(5))
            b = torch.randn(out_f, r, generator=g)
            norm = math.sqrt(float(((a @ a.T) * (b.T @ b)).sum())) * alpha / r  # ||scale B A||_F from r x r products
            b *= args.rel_norm * wnorm[key] / norm
            mods[key] = LoraModule(a, b, alpha / r)
        path = root / "experts" / f"expert{i}"
        save_peft_adapter(mods, path, {"base_model_name_or_path": str(base), "task_type": "CAUSAL_LM"})
        experts.append(path)
    task_dirs = {}
    for j, t in enumerate(tasks):
        rng = np.random.default_rng(args.seed + 17 * j)
        task_dirs[t] = root / "tasks" / t
        task_dirs[t].mkdir(parents=True)
        for split in ("validation", "test"):
            rows = [GEN[t].generate(rng) for _ in range(args.samples)]
            with open(task_dirs[t] / f"{split}.jsonl", "w") as fh:
                fh.writelines(json.dumps({"prompt": GEN[t].prompt(x), "answer": y}) + "\n" for x, y in rows)
    ab_bytes = sum(4 * r * sum(w.shape) for w in linears.values())  # A [r,in] + B [out,r], fp32
    del model
    return {"base": base, "experts": experts, "tasks": task_dirs, "n_params": n_params,
            "base_bytes_stored": n_params * dtype.itemsize, "linear_params": sum(w.numel() for w in linears.values()),
            "expert_ab_bytes": ab_bytes, "n_linear": len(linears), "config": SIZES[args.size]}


def _tokenizer(tasks: list[str], vocab_size: int):
    """The zoo's character-level tokenizer with its vocabulary padded by unused tokens to the
    model's size (so every id a random model generates decodes, as with a released tokenizer)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from evomerge.zoo.model import BOS, EOS, PAD, UNK, build_tokenizer

    zoo = build_tokenizer([])
    vocab = dict(zoo.get_vocab())
    for i in range(len(vocab), vocab_size - len(tasks)):
        vocab[f"<unused{i}>"] = i
    backend = zoo.backend_tokenizer
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer, tok.decoder, tok.post_processor = backend.pre_tokenizer, backend.decoder, backend.post_processor
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
                                   padding_side="right", clean_up_tokenization_spaces=False)
    fast.add_tokens([f"<{t}>" for t in tasks])
    return fast
