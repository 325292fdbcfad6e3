"""Build the zoo: generate task data, pre-train the tiny base, train one LoRA expert per task.

Seeding: data and batch order come from explicit generators derived from ``seed``. Model and
LoRA initialisation inside transformers/peft draw from torch's global RNG, so those calls run
inside ``torch.random.fork_rng()`` with ``torch.manual_seed(...)``: the caller's RNG state is
restored afterwards and nothing outside the build is affected.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from evomerge.evaluation.encoding import Encoded, encode_pairs
from evomerge.io import atomic_dir, write_json_atomic, write_parquet_atomic
from evomerge.zoo import tasks as task_lib
from evomerge.zoo.model import PROFILES, Profile, build_config, build_tokenizer, recipe_hash
from evomerge.zoo.train import KeepSet, train
from evomerge.zoo.zoo import FORMAT_VERSION, MANIFEST, Zoo


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def make_splits(spec: task_lib.TaskSpec, n_train: int, n_eval: int, seed: int, index: int) -> dict[str, list]:
    """Disjoint train/validation/test splits of unique prompts."""
    rng = np.random.default_rng([seed, index, 7919])
    want = n_train + 2 * n_eval
    seen: dict[str, str] = {}
    tries = 0
    while len(seen) < want and tries < want * 20:
        p, a = task_lib.generate_examples(spec, 1, rng)[0]
        seen.setdefault(p, a)
        tries += 1
    pairs = list(seen.items())
    n_eval_eff = min(n_eval, len(pairs) // 4)
    test = pairs[:n_eval_eff]
    val = pairs[n_eval_eff : 2 * n_eval_eff]
    tr = pairs[2 * n_eval_eff :]
    return {"train": tr, "validation": val, "test": test}


def _write_split(path: Path, pairs: list) -> None:
    import pyarrow as pa

    table = pa.table({"prompt": [p for p, _ in pairs], "answer": [a for _, a in pairs]})
    write_parquet_atomic(path, table)


def _concat(parts: list[Encoded]) -> Encoded:
    width = max(e.input_ids.shape[1] for e in parts)

    def pad(t: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    return Encoded(
        torch.cat([pad(e.input_ids, 0) for e in parts]),
        torch.cat([pad(e.attention_mask, 0) for e in parts]),
        torch.cat([pad(e.labels, -100) for e in parts]),
        torch.cat([e.prompt_len for e in parts]),
        [a for e in parts for a in e.answers],
        [p for e in parts for p in e.prompts],
    )


def _gather_rows(data: Encoded, idx: torch.Tensor) -> Encoded:
    rows = idx.tolist()
    return Encoded(data.input_ids[idx], data.attention_mask[idx], data.labels[idx], data.prompt_len[idx],
                   [data.answers[i] for i in rows], [data.prompts[i] for i in rows])


def build_zoo(out: str | os.PathLike, *, profile: str = "default", seed: int = 0, overwrite: bool = False,
              progress: bool = True, threads: int = 1) -> Zoo:
    """Build a zoo folder at ``out`` and return it (see :mod:`evomerge.zoo.zoo` for the layout)."""
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm
    from transformers import LlamaForCausalLM

    prof: Profile = PROFILES[profile]
    t0 = time.perf_counter()
    names = list(prof.tasks)
    with _threads(threads), atomic_dir(out, overwrite=overwrite) as tmp:
        tokenizer = build_tokenizer(names)
        splits = {}
        for i, name in enumerate(names):
            splits[name] = make_splits(task_lib.TASKS[name], prof.n_train, prof.n_eval, seed, i)
            for split, pairs in splits[name].items():
                _write_split(tmp / "tasks" / name / f"{split}.parquet", pairs)
        train_sets = {
            n: encode_pairs(tokenizer, [p for p, _ in s["train"]], [a for _, a in s["train"]], n)
            for n, s in splits.items()
        }
        config = build_config(prof, len(tokenizer), tokenizer)
        with _seeded(seed):
            base = LlamaForCausalLM(config)
        total = prof.base_steps + len(names) * prof.expert_steps
        bar = tqdm(total=total, desc=f"zoo {profile}", disable=not progress, unit="step")
        gen = torch.Generator().manual_seed(seed)
        base_loss = train(
            base, base.parameters(), _concat(list(train_sets.values())), steps=prof.base_steps,
            lr=prof.base_lr, batch_size=prof.batch_size, generator=gen, on_step=lambda s, l: bar.update(1),
        )
        base.eval()
        keep = None
        if prof.keep_weight > 0:
            # a fixed pool of mixed training examples with the base's predictions on them
            mix = _concat(list(train_sets.values()))
            owner = torch.cat([torch.full((len(e),), i) for i, e in enumerate(train_sets.values())])
            pick = torch.randperm(len(mix), generator=gen)[: prof.keep_pool]
            keep, keep_owner = KeepSet.from_base(base, _gather_rows(mix, pick)), owner[pick]
        base.save_pretrained(tmp / "base")
        tokenizer.save_pretrained(tmp / "base")
        expert_loss = {}
        for i, name in enumerate(names):
            bar.set_postfix_str(name)
            with _seeded(seed * 1000 + i + 1):
                lcfg = LoraConfig(r=prof.rank, lora_alpha=prof.alpha, target_modules=list(prof.target_modules),
                                  lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
                model = get_peft_model(copy.deepcopy(base), lcfg)
            g = torch.Generator().manual_seed(seed * 1000 + i + 1)
            expert_loss[name] = train(
                model, model.parameters(), train_sets[name], steps=prof.expert_steps, lr=prof.expert_lr,
                batch_size=prof.batch_size, generator=g, on_step=lambda s, l: bar.update(1),
                keep=keep.subset(torch.nonzero(keep_owner != i).squeeze(1)) if keep is not None else None,
                keep_weight=prof.keep_weight,
            )
            model.save_pretrained(tmp / "experts" / name)
        bar.close()
        manifest = {
            "format_version": FORMAT_VERSION,
            "profile": profile,
            "recipe": recipe_hash(prof),
            "seed": seed,
            "tasks": [
                {"name": n, "domain": task_lib.TASKS[n].domain, "description": task_lib.TASKS[n].description,
                 "sizes": {s: len(v) for s, v in splits[n].items()}}
                for n in names
            ],
            "related_pairs": [list(p) for p in task_lib.related_pairs(names)],
            "model": {"hidden": prof.hidden, "layers": prof.layers, "heads": prof.heads,
                      "intermediate": prof.intermediate, "vocab": len(tokenizer),
                      "params": sum(p.numel() for p in base.parameters())},
            "training": {"base_steps": prof.base_steps, "expert_steps": prof.expert_steps, "rank": prof.rank,
                         "alpha": prof.alpha, "keep_weight": prof.keep_weight, "target_modules": list(prof.target_modules),
                         "base_final_loss": base_loss, "expert_final_loss": expert_loss},
            "versions": {"torch": torch.__version__, **_versions()},
        }
        manifest["scores"] = _measure(tmp, manifest)
        manifest["build_seconds"] = round(time.perf_counter() - t0, 1)
        manifest["built"] = {"at": time.time(), "pid": os.getpid()}
        write_json_atomic(tmp / MANIFEST, manifest)
    return Zoo.open(out)


def _versions() -> dict[str, str]:
    import peft
    import transformers

    return {"transformers": transformers.__version__, "peft": peft.__version__}


def _measure(root: Path, manifest: dict) -> dict:
    """Base vs own-expert scores per task (validation and test), recorded in the manifest."""
    from evomerge.evaluation.candidates import PerTask
    from evomerge.evaluation.evaluator import Evaluator
    from evomerge.experts.peft_io import load_peft_adapter

    zoo = Zoo(root=root, manifest=manifest)
    ev = Evaluator(zoo.base_dir, zoo.load_tasks(), metric="token_accuracy", max_samples=200)
    own = PerTask({t: load_peft_adapter(d).modules for t, d in zoo.expert_dirs.items()})
    out: dict = {}
    for split in ("validation", "test"):
        base, expert = ev.evaluate_many([{}, own], split=split)
        out[split] = {t: {"base": base.extra["metrics"][t], "expert": expert.extra["metrics"][t]} for t in zoo.tasks}
    return out
