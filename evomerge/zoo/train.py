"""Short training loops for the zoo's base model and LoRA experts (plain PyTorch, seeded)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from evomerge.evaluation.encoding import IGNORE, Encoded


def lm_loss(model, batch: Encoded) -> torch.Tensor:
    """Mean cross-entropy over answer tokens (``labels`` are pre-shifted)."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), batch.labels.reshape(-1), ignore_index=IGNORE
    )


def _gather(data: Encoded, idx: torch.Tensor) -> Encoded:
    mask = data.attention_mask[idx]
    width = int(mask.sum(1).max())
    return Encoded(
        data.input_ids[idx, :width], mask[:, :width], data.labels[idx, :width],
        data.prompt_len[idx], [], [],
    )


def train(
    model,
    params: Iterable[torch.nn.Parameter],
    data: Encoded,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
    on_step: Callable[[int, float], None] | None = None,
    keep: "KeepSet | None" = None,
    keep_weight: float = 0.0,
    lr_scale: Callable[[str], float] | None = None,
) -> float:
    """AdamW with linear warm-up and cosine decay; batches drawn with ``generator``.

    With ``keep`` (other tasks' examples and the base model's log-probabilities on them),
    each step also adds ``keep_weight * KL(base || model)`` on the answer tokens of a
    ``keep`` batch: the expert learns its task while leaving the others alone (a
    specialist), so unrelated experts interfere little when merged.
    ``lr_scale(name)`` (with ``params`` given as ``named_parameters()``) multiplies the learning
    rate of each parameter, e.g. a slower LoRA A (LoRA+).
    Returns the mean task loss of the last 10% of steps.
    """
    if lr_scale is None:
        params = [p for p in params if p.requires_grad]
        groups: list = params
    else:
        named = [(n, p) for n, p in params if p.requires_grad]
        params = [p for _, p in named]
        scales = sorted({lr_scale(n) for n, _ in named})
        groups = [{"params": [p for n, p in named if lr_scale(n) == s], "lr": lr * s} for s in scales]
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    model.train()
    tail: list[float] = []
    for step in range(steps):
        idx = torch.randint(0, len(data), (batch_size,), generator=generator)
        loss = lm_loss(model, _gather(data, idx))
        total = loss
        if keep is not None and keep_weight > 0:
            kidx = torch.randint(0, len(keep.data), (max(1, batch_size // 2),), generator=generator)
            total = loss + keep_weight * keep.kl(model, kidx)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step >= steps - max(1, steps // 10):
            tail.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, float(loss.detach()))
    model.eval()
    return sum(tail) / len(tail)


@dataclass
class KeepSet:
    """Examples of other tasks with the base model's log-probabilities at their answer tokens."""

    data: Encoded
    ref_logp: torch.Tensor  # [N, T, V] (zero outside answers)

    @classmethod
    def from_base(cls, model, data: Encoded, batch_size: int = 128) -> "KeepSet":
        parts = []
        with torch.no_grad():
            for start in range(0, len(data), batch_size):
                b = data.slice(start, start + batch_size)
                logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits.float()
                lp = torch.log_softmax(logits, -1) * (b.labels != IGNORE).unsqueeze(-1)
                parts.append(torch.nn.functional.pad(lp, (0, 0, 0, data.input_ids.shape[1] - lp.shape[1])))
        return cls(data, torch.cat(parts))

    def subset(self, rows: torch.Tensor) -> "KeepSet":
        return KeepSet(_gather(self.data, rows), self.ref_logp[rows][:, : int(self.data.attention_mask[rows].sum(1).max())])

    def kl(self, model, idx: torch.Tensor) -> torch.Tensor:
        """Mean KL(base || model) over the answer tokens of rows ``idx``."""
        b = _gather(self.data, idx)
        ref = self.ref_logp[idx, : b.input_ids.shape[1]]
        mask = b.labels != IGNORE
        cur = torch.log_softmax(model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits.float(), -1)
        kl = (ref.exp() * (ref - cur)).sum(-1)
        return (kl * mask).sum() / mask.sum().clamp(min=1)
