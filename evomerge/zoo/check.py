"""Does merging mean something in this zoo? Gain retention of registry merges vs k.

For k = 1..N experts (mutually unrelated ones first), merge them with registry methods and
score on the union of their tasks and on all tasks. ``retained`` is the share of the experts'
own average gain over the base that the merge keeps on the union of its tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from evomerge.zoo.zoo import Zoo

# (method, params as a function of k)
DEFAULT_METHODS: tuple[tuple[str, str], ...] = (
    ("task_arithmetic", "1"),
    ("task_arithmetic", "1/sqrt(k)"),
    ("ties", "1"),
    ("weight_average", ""),
)


@dataclass(frozen=True)
class CheckRow:
    k: int
    experts: tuple[str, ...]
    method: str
    params: dict
    union_base: float
    union_experts: float
    union_merged: float
    all_merged: float

    @property
    def retained(self) -> float:
        gain = self.union_experts - self.union_base
        return (self.union_merged - self.union_base) / gain if gain > 0 else float("nan")


def unrelated_first(zoo: Zoo) -> list[str]:
    """Task order: greedily add tasks unrelated to all chosen ones, then the rest in zoo order."""
    related = {frozenset(p) for p in zoo.related_pairs}
    chosen: list[str] = []
    for t in zoo.tasks:
        if all(frozenset((t, c)) not in related for c in chosen):
            chosen.append(t)
    return chosen + [t for t in zoo.tasks if t not in chosen]


def n_unrelated(zoo: Zoo, order: list[str]) -> int:
    """How many tasks at the head of ``order`` are mutually unrelated."""
    related = {frozenset(p) for p in zoo.related_pairs}
    for i, t in enumerate(order):
        if any(frozenset((t, c)) in related for c in order[:i]):
            return i
    return len(order)


def _params(method: str, spec: str, k: int) -> dict:
    if not spec:
        return {}
    lam = 1.0 if spec == "1" else 1.0 / math.sqrt(k)
    return {"lambda": lam}


def check_zoo(zoo: Zoo, *, metric: str = "token_accuracy", max_samples: int = 100, split: str = "validation",
              methods=DEFAULT_METHODS, k_max: int | None = None, evaluator=None) -> list[CheckRow]:
    """Rows for every k and method (see module docstring)."""
    from evomerge.evaluation import Evaluator, PerTask
    from evomerge.experts.peft_io import load_peft_adapter
    from evomerge.merging.apply import merge_lora

    ev = evaluator or Evaluator.from_zoo(zoo, metric=metric, max_samples=max_samples)
    experts = {t: load_peft_adapter(d).modules for t, d in zoo.expert_dirs.items()}
    base, own = ev.evaluate_many([{}, PerTask(experts)], split=split)
    order = unrelated_first(zoo)
    rows: list[CheckRow] = []
    for k in range(1, min(k_max or len(order), len(order)) + 1):
        chosen = order[:k]
        cands, labels = [], []
        for method, spec in methods:
            params = _params(method, spec, k)
            if (method, params) in labels:
                continue
            cands.append(merge_lora(method, [experts[t] for t in chosen], params=params))
            labels.append((method, params))
        results = ev.evaluate_many(cands, split=split)
        ub = sum(base.per_task[t] for t in chosen) / k
        ue = sum(own.per_task[t] for t in chosen) / k
        for (method, params), r in zip(labels, results):
            um = sum(r.per_task[t] for t in chosen) / k
            rows.append(CheckRow(k, tuple(chosen), method, params, ub, ue, um, r.fitness))
    return rows


def summarize(rows: list[CheckRow], n_unrelated: int) -> dict:
    """Best retention per k, the pass/fail of the zoo's targets, and the all-task curve."""
    best: dict[int, CheckRow] = {}
    for r in rows:
        if r.k not in best or r.retained > best[r.k].retained:
            best[r.k] = r
    ks = sorted(best)
    curve = {k: max(r.all_merged for r in rows if r.k == k) for k in ks}
    peak_k = max(ks, key=lambda k: curve[k])
    first = curve[ks[1]] - curve[ks[0]] if len(ks) > 1 else 0.0
    last = curve[ks[-1]] - curve[ks[-2]] if len(ks) > 1 else 0.0
    upto = [k for k in ks if 2 <= k <= min(4, n_unrelated)]
    return {
        "best": best,
        "curve": curve,
        "retention_2_4_ok": bool(upto) and all(best[k].retained >= 0.5 for k in upto),
        "bends": peak_k < ks[-1] or last < 0.5 * first,
        "peak_k": peak_k,
    }
