"""Is the zoo a world where merging matters? The targets of the shipped default zoo, measured.

Everything is measured on the validation split with token accuracy, from the stored files:

* base and own-expert scores per task (the base must be weak, every expert strong on its task);
* task arithmetic of the first k LoRA experts in order of own-task gain, k = 1..N, with lambda
  chosen per k from ``LAMBDAS`` on the same split ("tuned"), and with lambda = 1: the tuned
  all-task gain over the base must be real, reached at k >= 3, and saturate; lambda = 1 must
  fall from its best k to k = N (magnitudes add up);
* "ab"-space averaging against delta averaging (relative Frobenius error);
* related tasks (one domain) must have more correlated task vectors than unrelated ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from evomerge.zoo.zoo import Zoo

LAMBDAS = (1.0, 0.6, 0.35, 0.2)


@dataclass(frozen=True)
class Target:
    name: str
    value: float
    goal: str  # e.g. "<= 0.55"
    passed: bool
    note: str = ""


@dataclass(frozen=True)
class Curves:
    """All-task mean score of task arithmetic of the first k experts, per k and lambda."""

    order: list[str]
    base: float  # all-task mean of the base
    scores: dict[int, dict[float, float]]  # k -> lambda -> all-task mean

    def tuned(self) -> dict[int, float]:
        """Gain over the base per k, lambda chosen per k (best on this split)."""
        return {k: max(v.values()) - self.base for k, v in self.scores.items()}

    def at(self, lam: float) -> dict[int, float]:
        return {k: v[lam] - self.base for k, v in self.scores.items()}


def own_scores(zoo: Zoo, evaluator, split: str = "validation") -> tuple[dict, dict]:
    """``(base, expert)`` per-task scores: the base, and each LoRA expert on its own task."""
    from evomerge.evaluation import PerTask
    from evomerge.zoo.measure import lora_experts

    base, own = evaluator.evaluate_many([{}, PerTask(lora_experts(zoo))], split=split)
    return base.per_task, own.per_task


def gain_order(base: dict, own: dict) -> list[str]:
    """Tasks by own-task gain of their expert, largest first (ties: zoo order)."""
    return sorted(base, key=lambda t: -(own[t] - base[t]))


def ta_curves(zoo: Zoo, evaluator, order: list[str], base_mean: float, split: str = "validation",
              lambdas=LAMBDAS, k_max: int | None = None, on_k: Callable[[int], None] | None = None) -> Curves:
    """Task arithmetic of the first k experts of ``order`` for every k up to ``k_max``;
    ``on_k(k)`` is called after each k is scored."""
    from evomerge.merging.apply import merge_lora
    from evomerge.zoo.measure import lora_experts

    experts = lora_experts(zoo)
    scores: dict[int, dict[float, float]] = {}
    for k in range(1, _k_top(order, k_max) + 1):
        chosen = [experts[t] for t in order[:k]]
        cands = [merge_lora("task_arithmetic", chosen, params={"lambda": lam}) for lam in lambdas]
        scores[k] = {lam: r.fitness for lam, r in zip(lambdas, evaluator.evaluate_many(cands, split=split))}
        if on_k is not None:
            on_k(k)
    return Curves(order, base_mean, scores)


def _k_top(order: list[str], k_max: int | None) -> int:
    return min(k_max or len(order), len(order))


def saturation(gain: dict[int, float]) -> tuple[float, float]:
    """(gain added over the first third of k, gain added over the last third); k = 0 is the base."""
    n = max(gain)
    third = max(1, n // 3)
    g = {0: 0.0, **gain}
    return g[third] - g[0], g[n] - g[n - third]


def domain_correlation(zoo: Zoo) -> tuple[float, float]:
    """Mean cosine of LoRA task vectors over related pairs and over unrelated pairs."""
    corr = zoo.manifest.get("correlations", {})
    names, mat = corr.get("tasks", []), corr.get("lora")
    if not names or mat is None:
        return float("nan"), float("nan")
    related = {frozenset(p) for p in zoo.related_pairs}
    rel, unrel = [], []
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            (rel if frozenset((a, names[j])) in related else unrel).append(mat[i][j])
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return mean(rel), mean(unrel)


def evaluate_targets(zoo: Zoo, base: dict, own: dict, curves: Curves, ab_error: float) -> list[Target]:
    """Every target of the default zoo with its measured value (see module docstring)."""
    tasks = list(base)
    gains = {t: own[t] - base[t] for t in tasks}
    worst_base = max(tasks, key=lambda t: base[t])
    weakest = min(tasks, key=lambda t: gains[t])
    tuned, lam1 = curves.tuned(), curves.at(1.0)
    n = max(tuned)
    best_k = max(tuned, key=lambda k: (tuned[k], -k))
    first, last = saturation(tuned)
    best1 = max(lam1, key=lambda k: (lam1[k], -k))
    rel, unrel = domain_correlation(zoo)
    cpu = float(zoo.manifest.get("build_cpu_seconds", float("nan")))
    threads = zoo.manifest.get("build_threads", 1)
    out = [
        Target("base mean over tasks", sum(base.values()) / len(tasks), "<= 0.55", sum(base.values()) / len(tasks) <= 0.55),
        Target("base on its best task", base[worst_base], "<= 0.80", base[worst_base] <= 0.8, worst_base),
        Target("smallest own-task gain of an expert", gains[weakest], ">= 0.15", gains[weakest] >= 0.15, weakest),
        Target("mean own-task gain", sum(gains.values()) / len(tasks), ">= 0.35", sum(gains.values()) / len(tasks) >= 0.35),
        Target("tuned task arithmetic, best all-task gain", tuned[best_k], ">= +0.10", tuned[best_k] >= 0.10,
               f"at k={best_k}"),
        Target("k of that best gain", float(best_k), ">= 3", best_k >= 3),
        Target("saturation: last-third gain / first-third gain", last / first if first > 0 else float("inf"), "< 1/3",
               first > 0 and last < first / 3, f"first third {first:+.3f}, last third {last:+.3f}"),
        Target("lambda=1: fall from its best k to k=N", lam1[best1] - lam1[n], ">= 0.05", lam1[best1] - lam1[n] >= 0.05,
               f"best k={best1} ({lam1[best1]:+.3f}), k={n} ({lam1[n]:+.3f})"),
        Target('"ab" average vs delta average, relative error', ab_error, "<= 0.10", ab_error <= 0.10),
        Target("task-vector cosine, related minus unrelated pairs", rel - unrel, "> 0", rel - unrel > 0,
               f"related {rel:.3f}, unrelated {unrel:.3f}"),
        # CPU time (user+sys) of a one-thread build = its wall time on an idle core: a figure
        # that does not depend on how busy the building machine was
        Target("build CPU time, user+sys (min)", cpu / 60, "<= 15", cpu <= 900,
               f"{threads} thread(s); {zoo.manifest.get('build_seconds', '?')} s wall at load "
               f"{zoo.manifest.get('build_load', '?')}"),
    ]
    return out


def check_zoo(zoo: Zoo, *, max_samples: int = 200, split: str = "validation", evaluator=None,
              k_max: int | None = None, progress: bool = False) -> tuple[list[Target], Curves, dict, dict]:
    """Measure everything; returns ``(targets, curves, base scores, own-expert scores)``.

    ``progress``: a tqdm bar on stderr, one step per phase: loading the tasks and the base,
    scoring the base and the experts, task arithmetic per k, the "ab" fidelity (the default zoo
    takes minutes on a CPU)."""
    from tqdm.auto import tqdm

    from evomerge.evaluation import Evaluator
    from evomerge.zoo.measure import ab_fidelity, lora_experts

    n_k = _k_top(zoo.tasks, k_max)
    with tqdm(total=3 + n_k, desc="zoo check", unit="step", disable=not progress) as bar:
        def step(what: str) -> None:
            bar.set_postfix_str(what, refresh=False)
            bar.update(1)

        bar.set_postfix_str("loading the base and the tasks")
        ev = evaluator or Evaluator.from_zoo(zoo, metric="token_accuracy", max_samples=max_samples)
        step("base and experts")
        base, own = own_scores(zoo, ev, split)
        order = gain_order(base, own)
        step(f"task arithmetic k=1/{n_k}")
        curves = ta_curves(zoo, ev, order, sum(base.values()) / len(base), split, k_max=k_max,
                           on_k=lambda k: step(f"task arithmetic k={k + 1}/{n_k}" if k < n_k else '"ab" fidelity'))
        ab = ab_fidelity(lora_experts(zoo))
        step("done")
    return evaluate_targets(zoo, base, own, curves, ab), curves, base, own
