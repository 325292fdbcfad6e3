"""Build the zoo: generate task data, pre-train the tiny base, train the experts of every task.

Per task: one LoRA expert (peft adapter folder) and, when the profile asks for it, one full
fine-tune (a safetensors checkpoint of the whole model). With ``shared_init`` (on by default)
every LoRA expert starts from the same LoRA initialisation.

Seeding: data and batch order come from explicit generators derived from ``seed``. Model and
LoRA initialisation inside transformers/peft draw from torch's global RNG, so those calls run
inside ``torch.random.fork_rng()`` with ``torch.manual_seed(...)``: the caller's RNG state is
restored afterwards and nothing outside the build is affected.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from evomerge.evaluation.encoding import Encoded, encode_pairs
from evomerge.io import atomic_dir, write_json_atomic, write_parquet_atomic
from evomerge.zoo import tasks as task_lib
from evomerge.zoo.forked import run_forked
from evomerge.zoo.lora_init import A_INITS, lora_config, new_peft_model, set_shared_a, shared_a
from evomerge.zoo.model import PROFILES, Profile, build_config, build_tokenizer, recipe_hash
from evomerge.zoo.train import KeepSet, train
from evomerge.zoo.zoo import FORMAT_VERSION, MANIFEST, Zoo, file_hashes


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


def resolve_profile(profile: str | Profile, shared_init: bool | None = None, full: bool | None = None) -> Profile:
    """The profile to build (by name, or a :class:`Profile`), with the build options applied."""
    from evomerge.errors import ConfigError

    if isinstance(profile, Profile):
        prof = profile
    else:
        if profile not in PROFILES:
            raise ConfigError(f"zoo profile must be one of {sorted(PROFILES)}. Got {profile!r} instead.")
        prof = PROFILES[profile]
    if shared_init is not None:
        prof = dataclasses.replace(prof, shared_init=bool(shared_init))
    if full is not None and not full:
        prof = dataclasses.replace(prof, full_steps=0)
    if prof.lora_a_init not in A_INITS:
        raise ConfigError(f"zoo profile {prof.name}: lora_a_init must be one of {A_INITS}. Got {prof.lora_a_init!r} instead.")
    if prof.lora_a_init != "random" and not prof.shared_init:
        raise ConfigError(f"zoo profile {prof.name}: lora_a_init={prof.lora_a_init!r} is a shared initialisation; "
                          "it needs shared_init")
    return prof


def _store_dtype(prof: Profile) -> torch.dtype:
    return {"float32": torch.float32, "float16": torch.float16}[prof.store_dtype]


def _save_model(model, folder: Path, dtype: torch.dtype) -> None:
    (copy.deepcopy(model).to(dtype) if dtype != torch.float32 else model).save_pretrained(folder)


def build_zoo(out: str | os.PathLike, *, profile: str | Profile = "default", seed: int = 0, overwrite: bool = False,
              progress: bool = True, threads: int = 1, shared_init: bool | None = None,
              full: bool | None = None, workers: int = 1) -> Zoo:
    """Build a zoo folder at ``out`` and return it (see :mod:`evomerge.zoo.zoo` for the layout).

    ``shared_init`` / ``full`` override the profile's options (one LoRA initialisation for all
    experts; full fine-tunes on or off). ``workers`` > 1 trains the experts in that many
    forked processes (each with ``threads`` threads); every expert has its own seeds, so the
    files are those of a one-process build.
    """
    from tqdm.auto import tqdm
    from transformers import LlamaForCausalLM

    from evomerge.errors import ConfigError
    from evomerge.zoo.zoo import shipped_refusal

    prof = resolve_profile(profile, shared_init, full)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"zoo seed must be an integer >= 0. Got {seed!r} instead.")
    why = shipped_refusal(out)
    if why is not None:
        raise ConfigError(why)
    t0 = time.perf_counter()
    cpu0 = _cpu()
    names = list(prof.tasks)
    dtype = _store_dtype(prof)
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
        total = prof.base_steps + len(names) * (prof.expert_steps + prof.full_steps)
        bar = tqdm(total=total, desc=f"zoo {prof.name}", disable=not progress, unit="step")
        gen = torch.Generator().manual_seed(seed)
        base_loss = train(
            base, base.parameters(), _concat(list(train_sets.values())), steps=prof.base_steps,
            lr=prof.base_lr, batch_size=prof.batch_size, generator=gen, on_step=lambda s, l: bar.update(1),
        )
        base.eval()
        if dtype != torch.float32:  # the stored base is exactly the one the experts start from
            with torch.no_grad():
                for p in base.parameters():
                    p.copy_(p.to(dtype).to(torch.float32))
        keep = None
        mix = _concat(list(train_sets.values()))
        if prof.keep_weight > 0:
            # a fixed pool of mixed training examples with the base's predictions on them
            owner = torch.cat([torch.full((len(e),), i) for i, e in enumerate(train_sets.values())])
            pick = torch.randperm(len(mix), generator=gen)[: prof.keep_pool]
            keep, keep_owner = KeepSet.from_base(base, _gather_rows(mix, pick)), owner[pick]

        def keep_for(i: int):
            return keep.subset(torch.nonzero(keep_owner != i).squeeze(1)) if keep is not None else None

        # after the keep pool's draw, so that "random" builds draw exactly as before
        a0 = shared_a(prof.lora_a_init, base, mix, prof, seed * 1000 + 1, list(train_sets.values()))
        _save_model(base, tmp / "base", dtype)
        tokenizer.save_pretrained(tmp / "base")
        jobs = [("lora", i) for i in range(len(names))]
        jobs += [("full", i) for i in range(len(names) if prof.full_steps > 0 else 0)]
        _JOB.update(prof=prof, names=names, seed=seed, base=base, train_sets=train_sets, keep_for=keep_for,
                    tmp=tmp, dtype=dtype, shared_a=a0, bar=bar if workers <= 1 else None, threads=threads)
        try:
            if workers > 1:  # independent jobs, seeded per job: the same files as one process writes
                done = run_forked(_train_job, jobs, workers)
                bar.update(sum(prof.expert_steps if k == "lora" else prof.full_steps for k, _ in jobs))
            else:
                done = [_train_job(j) for j in jobs]
        finally:
            _JOB.clear()
        expert_loss = {names[i]: loss for (kind, i), loss in zip(jobs, done) if kind == "lora"}
        full_loss = {names[i]: loss for (kind, i), loss in zip(jobs, done) if kind == "full"}
        bar.close()
        manifest = {
            "format_version": FORMAT_VERSION,
            "profile": prof.name,
            "recipe": recipe_hash(prof),
            "seed": seed,
            "tasks": [
                {"name": n, "domain": task_lib.TASKS[n].domain, "description": task_lib.TASKS[n].description,
                 "sizes": {s: len(v) for s, v in splits[n].items()}}
                for n in names
            ],
            "related_pairs": [list(p) for p in task_lib.related_pairs(names)],
            "full_experts": prof.full_steps > 0,
            "model": {"hidden": prof.hidden, "layers": prof.layers, "heads": prof.heads,
                      "intermediate": prof.intermediate, "vocab": len(tokenizer),
                      "params": sum(p.numel() for p in base.parameters()), "stored_dtype": prof.store_dtype},
            "training": {"base_steps": prof.base_steps, "expert_steps": prof.expert_steps, "rank": prof.rank,
                         "alpha": prof.alpha, "keep_weight": prof.keep_weight, "target_modules": list(prof.target_modules),
                         "shared_init": prof.shared_init, "lora_a_lr_ratio": prof.lora_a_lr_ratio,
                         **({} if prof.lora_a_init == "random" else
                            {"lora_a_init": prof.lora_a_init, "lora_a_warmup_steps": prof.lora_a_warmup_steps}),
                         "full_steps": prof.full_steps, "full_lr": prof.full_lr,
                         "base_final_loss": base_loss, "expert_final_loss": expert_loss, "full_final_loss": full_loss},
            "versions": {"torch": torch.__version__, **_versions()},
        }
        from evomerge.zoo.measure import measure

        manifest.update(measure(Zoo(root=tmp, manifest=manifest)))
        manifest["build_seconds"] = round(time.perf_counter() - t0, 1)
        manifest["build_cpu_seconds"] = round(_cpu() - cpu0, 1)
        manifest["build_threads"] = threads
        manifest["build_workers"] = workers
        manifest["build_load"] = [round(x, 2) for x in os.getloadavg()]  # at the end: others' jobs too
        manifest["built"] = {"at": time.time(), "pid": os.getpid()}
        manifest["files"] = file_hashes(tmp)
        write_json_atomic(tmp / MANIFEST, manifest)
    return Zoo.open(out)


_JOB: dict = {}  # what an expert-training job needs (inherited by forked workers)


def _cpu() -> float:
    """CPU seconds (user + sys) of this process and of its finished worker processes."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _train_job(job: tuple[str, int]) -> float:
    """Train and save one expert: ``("lora", i)`` or ``("full", i)``; returns its final task loss."""
    kind, i = job
    c = _JOB
    prof, seed, name = c["prof"], c["seed"], c["names"][i]
    torch.set_num_threads(c["threads"])
    if kind == "lora":
        with _seeded(seed * 1000 + (1 if prof.shared_init else i + 1)):
            model = new_peft_model(copy.deepcopy(c["base"]), lora_config(prof))
        if c.get("shared_a") is not None:  # a data-informed shared A, B = 0
            set_shared_a(model, c["shared_a"])
        g = torch.Generator().manual_seed(seed * 1000 + i + 1)
        steps, lr = prof.expert_steps, prof.expert_lr
    else:
        model = copy.deepcopy(c["base"])
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 2, i]).generate_state(1)[0]))
        steps, lr = prof.full_steps, prof.full_lr
    bar = c["bar"]
    ratio = prof.lora_a_lr_ratio if kind == "lora" else 1.0
    loss = train(
        model, model.parameters() if ratio == 1.0 else model.named_parameters(), c["train_sets"][name], steps=steps,
        lr=lr, batch_size=prof.batch_size, generator=g, on_step=None if bar is None else (lambda s, l: bar.update(1)),
        keep=c["keep_for"](i), keep_weight=prof.keep_weight,
        lr_scale=None if ratio == 1.0 else (lambda n: ratio if ".lora_A." in n else 1.0),
    )
    if kind == "lora":
        model.save_pretrained(c["tmp"] / "experts" / name)
    else:
        _save_model(model, c["tmp"] / "full" / name, c["dtype"])
    return loss


def _versions() -> dict[str, str]:
    import peft
    import transformers

    return {"transformers": transformers.__version__, "peft": peft.__version__}
