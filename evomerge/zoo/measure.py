"""Figures a zoo records about itself: base vs own-expert scores, task-vector correlations and
how far "ab"-space averaging is from averaging the deltas."""

from __future__ import annotations

import torch

from evomerge.zoo.zoo import Zoo


def lora_experts(zoo: Zoo) -> dict:
    from evomerge.experts.peft_io import load_peft_adapter

    return {t: load_peft_adapter(d).modules for t, d in zoo.expert_dirs.items()}


def full_task_vectors(zoo: Zoo) -> dict:
    """``{task: TensorDict}`` of the full fine-tunes (fine-tune minus base, float32); {} if none."""
    from evomerge.experts.pool import load_pool

    if not zoo.full_dirs:
        return {}
    pool = load_pool([zoo.full_dirs[t] for t in zoo.tasks], base=zoo.base_dir, names=zoo.tasks)
    return {t: pool.task_vector(i) for i, t in enumerate(zoo.tasks)}


def _flat(tv: dict) -> torch.Tensor:
    return torch.cat([tv[k].reshape(-1).to(torch.float64) for k in sorted(tv)])


def cosine_matrix(vectors: dict) -> list[list[float]]:
    """Pairwise cosine similarity of task vectors (rows/columns in the dict's order)."""
    flat = torch.stack([_flat(v) for v in vectors.values()])
    flat = flat / flat.norm(dim=1, keepdim=True).clamp(min=1e-30)
    return [[round(float(x), 4) for x in row] for row in flat @ flat.T]


def ab_fidelity(experts: dict) -> float:
    """Relative Frobenius error of the "ab"-space average against the delta average (all experts)."""
    from evomerge.merging.apply import merge_lora

    mods = list(experts.values())
    delta = merge_lora("weight_average", mods, space="delta")
    ab = merge_lora("weight_average", mods, space="ab")
    num = sum(float((ab[k].delta(torch.float64) - delta[k].to(torch.float64)).pow(2).sum()) for k in delta)
    den = sum(float(delta[k].to(torch.float64).pow(2).sum()) for k in delta)
    return (num / den) ** 0.5


def measure(zoo: Zoo, max_samples: int = 200) -> dict:
    """``scores`` (base / lora / full per task and split), ``correlations`` and ``ab_fidelity``."""
    from evomerge.evaluation.candidates import PerTask
    from evomerge.evaluation.evaluator import Evaluator

    lora = lora_experts(zoo)
    full = full_task_vectors(zoo)
    ev = Evaluator(zoo.base_dir, zoo.load_tasks(), metric="token_accuracy", max_samples=max_samples)
    cands = [{}, PerTask(lora)] + ([PerTask(full)] if full else [])
    scores: dict = {}
    for split in ("validation", "test"):
        res = ev.evaluate_many(cands, split=split)
        scores[split] = {
            t: {"base": res[0].extra["metrics"][t], "expert": res[1].extra["metrics"][t],
                **({"full": res[2].extra["metrics"][t]} if full else {})}
            for t in zoo.tasks
        }
    corr = {"tasks": zoo.tasks, "lora": cosine_matrix({t: {k: m.delta(torch.float32) for k, m in lora[t].items()}
                                                       for t in zoo.tasks})}
    if full:
        corr["full"] = cosine_matrix(full)
    return {"scores": scores, "correlations": corr, "ab_fidelity": round(ab_fidelity(lora), 5)}
