"""Majority-vote ensembles: every candidate answers greedily, the most common answer wins.

GENOME's final step. Candidates come ranked (best validation fitness first); a tie between
answers goes to the one given by the highest-ranked candidate. Answers are generated once and
every prefix ensemble (the top 1, 2, ..., n candidates) is voted from the same generations.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Sequence

import torch

from evomerge.errors import ConfigError, DataError
from evomerge.evaluation import metrics as M
from evomerge.evaluation.generate import greedy_generate

if TYPE_CHECKING:
    from evomerge.evaluation.evaluator import EvalResult, Evaluator

VOTE_METRICS = ("exact_match",) + M.TEXT_METRICS
TF_NOTE = (
    "{metric} is teacher-forced and undefined for a voted answer; the ensemble is scored by "
    "exact match of the voted (generated) answer"
)


def vote(answers: Sequence[str]) -> int:
    """Index of the winning candidate: the first one whose answer is the most common.

    ``answers[c]`` is candidate c's answer, candidates ordered best first, so among answers
    with equal counts the one the higher-ranked candidate gave wins.
    """
    if not answers:
        raise ValueError("vote needs at least one answer")
    counts = Counter(answers)
    top = max(counts.values())
    return next(i for i, a in enumerate(answers) if counts[a] == top)


def voted_scores(pred: Sequence[str], ref: Sequence[str], text: bool) -> dict[str, float]:
    """Exact match (and token F1 / ROUGE-L / BLEU if ``text``) of one answer's tokens."""
    out = {"exact_match": float(list(pred) == list(ref))}
    if text:
        out.update({k: v[0] for k, v in M.text_scores([pred], [ref]).items()})
    return out


def _check_sizes(sizes: Sequence[int] | None, n: int) -> list[int]:
    if sizes is None:
        return list(range(1, n + 1))
    out = sorted({int(k) for k in sizes})
    bad = [k for k in out if not 1 <= k <= n]
    if bad or not out:
        raise ConfigError(f"evaluate_ensemble: `sizes` must lie in 1..{n} (the number of candidates). Got {list(sizes)!r}.")
    return out


@torch.inference_mode()
def _task_answers(ev: "Evaluator", data, deltas: list[dict[str, torch.Tensor]]) -> tuple[list[list[list[str]]], list[list[str]]]:
    """``gen[c][i]``: candidate c's greedy answer tokens on row i; ``refs[i]``: reference tokens."""
    n = len(deltas)
    uniq: dict[int, int] = {}  # candidates sharing a delta object are generated once
    order = [uniq.setdefault(id(d), len(uniq)) for d in deltas]
    uniq_deltas = [deltas[order.index(j)] for j in range(len(uniq))]
    per_chunk = ev._chunks(len(uniq_deltas))
    gen_u: list[list[list[str]]] = [[] for _ in uniq_deltas]
    refs: list[list[str]] = []
    for start in range(0, len(data), ev.batch_size):
        batch = data.slice(start, start + ev.batch_size)
        refs.extend(ev.tokenizer.tokenize(a) for a in batch.answers)
        for c0 in range(0, len(uniq_deltas), per_chunk):
            group = uniq_deltas[c0 : c0 + per_chunk]
            out = greedy_generate(ev.model, ev.params, ev.linears, group, batch, ev.tokenizer, ev.max_new_tokens)
            for j, rows in enumerate(out):
                gen_u[c0 + j].extend(rows)
    return [gen_u[order[c]] for c in range(n)], refs


def evaluate_ensemble(
    ev: "Evaluator", candidates: Sequence[Any], split: str = "validation", sizes: Sequence[int] | None = None
) -> "EvalResult":
    """Majority vote of ``candidates`` (best first) on ``split``; see :meth:`Evaluator.evaluate_ensemble`."""
    from evomerge.evaluation.evaluator import EvalResult

    candidates = list(candidates)
    if not candidates:
        raise ConfigError("evaluate_ensemble: `candidates` is empty; an ensemble needs at least one candidate")
    for t in ev.tasks:
        if split not in ev.data[t]:
            raise DataError(f"evaluation: task `{t}` has no split `{split}` (has {sorted(ev.data[t])})")
    n = len(candidates)
    ks = sorted(set(_check_sizes(sizes, n)) | {n})
    scored_by = ev.metric if ev.metric in M.TEXT_METRICS else "exact_match"
    text = ev.text_metrics or scored_by in M.TEXT_METRICS
    keys = VOTE_METRICS if text else ("exact_match",)
    resolved = [ev._resolve(c, i) for i, c in enumerate(candidates)]
    # sums[k][task][metric], agree[k][task]: summed over rows
    sums = {k: {t: dict.fromkeys(keys, 0.0) for t in ev.tasks} for k in ks}
    agree = {k: {t: 0.0 for t in ev.tasks} for k in ks}
    for t in ev.tasks:
        data = ev.data[t][split]
        gen, refs = _task_answers(ev, data, [r[t] for r in resolved])
        for i, ref in enumerate(refs):
            strings = [ev.tokenizer.convert_tokens_to_string(gen[c][i]) for c in range(n)]
            cache: dict[int, dict[str, float]] = {}  # winner index -> its scores
            for k in ks:
                w = vote(strings[:k])
                if w not in cache:
                    cache[w] = voted_scores(gen[w][i], ref, text)
                for m in keys:
                    sums[k][t][m] += cache[w][m]
                agree[k][t] += strings[:k].count(strings[w]) / k
        for k in ks:
            for m in keys:
                sums[k][t][m] /= len(data)
            agree[k][t] /= len(data)
    wsum = sum(ev.task_weights.values())

    def wmean(per: dict[str, float]) -> float:
        return float(sum(ev.task_weights[t] * per[t] for t in ev.tasks) / wsum)

    by_k: dict[int, dict[str, Any]] = {}
    for k in ks:
        per_task = {t: float(sums[k][t][scored_by]) for t in ev.tasks}
        by_k[k] = {"per_task": per_task, "fitness": wmean(per_task), "metrics": sums[k],
                   "agreement": wmean(agree[k])}
    top = by_k[n]
    extra: dict[str, Any] = {
        "split": split, "metric": ev.metric, "scored_by": scored_by, "n_candidates": n,
        "metrics": top["metrics"], "mean": {m: wmean({t: top["metrics"][t][m] for t in ev.tasks}) for m in keys},
        "agreement": top["agreement"],
        "by_k": {k: v for k, v in by_k.items() if sizes is None or k in set(sizes)},
    }
    if scored_by != ev.metric:
        extra["note"] = TF_NOTE.format(metric=ev.metric)
    return EvalResult(top["per_task"], top["fitness"], extra)
