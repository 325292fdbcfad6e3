"""Scorers: teacher-forced metrics from logits, text metrics from generated answers.

All return per-example values in [0, 1] (cross-entropy: nats per answer token, >= 0).
Text metrics compare token sequences of the model's own tokenizer (characters for the zoo),
so they behave the same for answers without spaces ("4721") and for sentences.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import torch

from evomerge.evaluation.encoding import IGNORE

TEACHER_FORCED = ("token_accuracy", "exact_match", "neg_cross_entropy")
TEXT_METRICS = ("token_f1", "rouge_l", "bleu")
METRICS = TEACHER_FORCED + TEXT_METRICS


def teacher_forced(logits: torch.Tensor, labels: torch.Tensor, chunk_elems: int = 1 << 22) -> dict[str, torch.Tensor]:
    """Per-example token accuracy, exact match and mean cross-entropy over answer tokens.

    An example's scored positions are its answer's tokens and the closing EOS (the labels that are
    not ``IGNORE``); its token accuracy and cross-entropy are means over those. The evaluator
    averages these per-example values over a task's examples (each example weighs the same,
    whatever its length), so a task's score is not a mean pooled over all its tokens.

    ``labels`` are pre-shifted (``labels[:, t]`` is predicted from position ``t``), ``IGNORE``
    elsewhere. Exact match here means every answer token *and* the closing EOS is the argmax
    prediction given the correct prefix, which is exactly when greedy decoding reproduces the
    reference (ties aside), so it needs no generation.

    The log-softmax runs over a few rows at a time (``chunk_elems`` logits each): a batch's
    whole ``[B, T, V]`` log-probabilities (and, for bf16 logits, their fp32 copy) would double
    the logits' memory, 50 MiB a batch at a 32k vocabulary (benchmarks/model_scale.py). Rows
    are independent, so the values are those of one call over the whole batch.
    """
    mask = labels != IGNORE
    safe = labels.clamp(min=0)
    rows = max(1, chunk_elems // max(1, logits[0].numel())) if len(logits) else 1
    parts = [-torch.log_softmax(logits[i : i + rows].float(), dim=-1).gather(-1, safe[i : i + rows, ..., None])[..., 0]
             for i in range(0, len(logits), rows)]
    nll = torch.cat(parts) if parts else torch.zeros(labels.shape, device=logits.device)
    correct = (logits.argmax(-1) == safe) & mask
    n = mask.sum(-1).clamp(min=1)
    return {
        "token_accuracy": correct.sum(-1).double() / n,
        "exact_match": (correct.sum(-1) == mask.sum(-1)).double(),
        "cross_entropy": (nll * mask).sum(-1).double() / n,
    }


def token_f1(pred: Sequence[str], ref: Sequence[str]) -> float:
    """Multiset F1 of two token sequences (1 when both are empty)."""
    if not pred and not ref:
        return 1.0
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    p, r = common / len(pred), common / len(ref)
    return 2 * p * r / (p + r)


class _ListTokenizer:
    """rouge-score tokenizer protocol over pre-split tokens joined by U+241F."""

    SEP = "\u241f"

    def tokenize(self, text: str) -> list[str]:
        return [t for t in text.split(self.SEP) if t]


def rouge_l(pred: Sequence[str], ref: Sequence[str]) -> float:
    """ROUGE-L F-measure (rouge-score) on token sequences."""
    from rouge_score import rouge_scorer

    if not pred and not ref:
        return 1.0
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_ListTokenizer())
    sep = _ListTokenizer.SEP
    return float(scorer.score(sep.join(ref), sep.join(pred))["rougeL"].fmeasure)


def bleu(pred: Sequence[str], ref: Sequence[str]) -> float:
    """Sentence BLEU (sacrebleu, effective n-gram order) on token sequences, scaled to [0, 1]."""
    from sacrebleu.metrics import BLEU

    if not pred and not ref:
        return 1.0
    if not pred or not ref:
        return 0.0
    metric = BLEU(tokenize="none", effective_order=True)
    # sacrebleu splits on spaces: encode each token as a space-free string
    enc = {t: f"t{i}" for i, t in enumerate(dict.fromkeys(list(pred) + list(ref)))}
    score = metric.sentence_score(" ".join(enc[t] for t in pred), [" ".join(enc[t] for t in ref)]).score
    return min(1.0, float(score) / 100.0)


def text_scores(preds: Sequence[Sequence[str]], refs: Sequence[Sequence[str]]) -> dict[str, list[float]]:
    """Per-example token F1, ROUGE-L and BLEU."""
    return {
        "token_f1": [token_f1(p, r) for p, r in zip(preds, refs)],
        "rouge_l": [rouge_l(p, r) for p, r in zip(preds, refs)],
        "bleu": [bleu(p, r) for p, r in zip(preds, refs)],
    }
