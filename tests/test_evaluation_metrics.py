"""Scorers: perfect answers score 1, wrong ones 0, partial ones match hand-worked values."""

from __future__ import annotations

import math

import pytest
import torch

from evomerge.evaluation import metrics as M
from evomerge.evaluation.encoding import IGNORE


def test_teacher_forced_hand_worked():
    # two examples, vocab 3; example 0 answer tokens at t=1,2; example 1 at t=0
    logits = torch.tensor(
        [
            [[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 0.0, 5.0]],
            [[0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
        ]
    )
    labels = torch.tensor([[IGNORE, 0, 1], [2, IGNORE, IGNORE]])
    s = M.teacher_forced(logits, labels)
    assert s["token_accuracy"].tolist() == [0.5, 0.0]
    assert s["exact_match"].tolist() == [0.0, 0.0]
    lse5 = math.log(math.exp(5) + 2)
    ce0 = ((lse5 - 5) + (lse5 - 0)) / 2
    ce1 = math.log(math.exp(2) + 2) - 0
    assert s["cross_entropy"].tolist() == pytest.approx([ce0, ce1], rel=1e-6)


def test_teacher_forced_perfect_scores_one():
    labels = torch.tensor([[IGNORE, 2, 0, 1]])
    logits = torch.full((1, 4, 3), -10.0)
    for t, y in enumerate(labels[0].tolist()):
        if y != IGNORE:
            logits[0, t, y] = 10.0
    s = M.teacher_forced(logits, labels)
    assert s["token_accuracy"].item() == 1.0 and s["exact_match"].item() == 1.0
    assert s["cross_entropy"].item() < 1e-6


@pytest.mark.parametrize("fn", [M.token_f1, M.rouge_l, M.bleu])
def test_text_metric_bounds(fn):
    assert fn(list("4721"), list("4721")) == pytest.approx(1.0)
    assert fn(list("abc"), list("xyz")) == 0.0
    assert fn([], list("xyz")) == 0.0
    assert fn(list("α("), list("α(")) == pytest.approx(1.0)  # non-ASCII, punctuation-only tokens
    assert 0.0 < fn(list("abcd"), list("abce")) < 1.0


def test_token_f1_hand_worked():
    # pred a,b,b ; ref b,c: common = {b:1}; P=1/3, R=1/2, F1 = 0.4
    assert M.token_f1(list("abb"), list("bc")) == pytest.approx(0.4)


def test_rouge_l_hand_worked():
    # LCS("abcd", "acbd") = 3 -> P = R = F = 3/4
    assert M.rouge_l(list("abcd"), list("acbd")) == pytest.approx(0.75)


def test_bleu_matches_sacrebleu_on_words():
    import sacrebleu

    pred, ref = "the cat sat on the mat".split(), "the cat is on the mat".split()
    want = sacrebleu.sentence_bleu(" ".join(pred), [" ".join(ref)], tokenize="none").score / 100
    assert M.bleu(pred, ref) == pytest.approx(want, rel=1e-9)
