"""Majority-vote ensembles: the vote against a hand-made majority over each candidate's own
greedy answers, tie-breaking by rank, one-candidate ensembles against evaluate()."""

from __future__ import annotations

import copy

import pytest
import torch

from evomerge.errors import ConfigError, DataError
from evomerge.evaluation import Evaluator
from evomerge.evaluation.candidates import to_deltas
from evomerge.evaluation.ensemble import vote
from evomerge.evaluation.generate import greedy_generate

torch.set_num_threads(1)
TASKS = ["rev_digits", "brackets"]
N = 24


@pytest.fixture(scope="module")
def ev(small_zoo):
    return Evaluator.from_zoo(small_zoo, tasks=TASKS, max_samples=N)


def _own_answers(ev, candidate, task):
    """One candidate's greedy answers, generated alone, one row at a time, as strings."""
    data = ev.data[task]["validation"]
    deltas = [to_deltas(candidate, ev.params)] if candidate else [{}]
    out = []
    for i in range(len(data)):
        toks = greedy_generate(ev.model, ev.params, ev.linears, deltas, data.slice(i, i + 1), ev.tokenizer)[0][0]
        out.append(ev.tokenizer.convert_tokens_to_string(toks))
    return out, data.answers


def _manual_majority(rows):
    """Most common answer; ties go to the answer of the lowest candidate index."""
    counts = {}
    for rank, a in enumerate(rows):
        c, first = counts.get(a, (0, rank))
        counts[a] = (c + 1, first)
    return min(counts, key=lambda a: (-counts[a][0], counts[a][1]))


def test_vote_hand_cases():
    assert vote(["a", "b", "b"]) == 1
    assert vote(["a", "b"]) == 0 and vote(["b", "a"]) == 0
    assert vote(["x", "y", "y", "x"]) == 0  # 2-2 tie: the best-ranked candidate's answer
    assert vote(["x", "y", "z", "z", "y"]) == 1  # y and z tie at 2; y is given first (rank 1)
    assert vote(["only"]) == 0


def test_vote_matches_manual_majority_of_each_candidates_answers(ev, zoo_experts):
    cands = [zoo_experts["brackets"], zoo_experts["rev_digits"], {}, zoo_experts["majority"]]
    res = ev.evaluate_ensemble(cands)
    answers = {t: [_own_answers(ev, c, t) for c in cands] for t in TASKS}
    for k in (1, 2, 3, 4):
        for t in TASKS:
            refs = answers[t][0][1]
            voted = [_manual_majority([answers[t][c][0][i] for c in range(k)]) for i in range(N)]
            want = sum(v == r for v, r in zip(voted, refs)) / N
            assert res.extra["by_k"][k]["per_task"][t] == pytest.approx(want, abs=1e-12), (k, t)
    assert res.per_task == res.extra["by_k"][4]["per_task"]
    assert res.fitness == pytest.approx(sum(res.per_task.values()) / len(TASKS))
    assert res.extra["scored_by"] == "exact_match" and "token_accuracy" in res.extra["note"]
    # the vote changes something here, otherwise the check above could not tell k apart
    assert len({tuple(res.extra["by_k"][k]["per_task"].values()) for k in (1, 2, 3, 4)}) > 1


def test_two_that_agree_outvote_the_best_ranked(ev, zoo_experts):
    a, b = zoo_experts["rev_digits"], zoo_experts["brackets"]
    em = {n: r.extra["metrics"] for n, r in zip("ab", ev.evaluate_many([a, b]))}
    # a distinct copy of `a` answers exactly like `a`: two of three agree on every row
    for cands in ([b, a, copy.deepcopy(a)], [a, b, copy.deepcopy(a)]):
        r = ev.evaluate_ensemble(cands)
        for t in TASKS:
            assert r.per_task[t] == pytest.approx(em["a"][t]["exact_match"], abs=1e-12)
        assert r.extra["agreement"] >= 2 / 3 - 1e-12


def test_ties_go_to_the_higher_ranked_candidate(ev, zoo_experts):
    a, b = zoo_experts["rev_digits"], zoo_experts["brackets"]
    ra, rb = ev.evaluate_many([a, b])
    em_a = {t: ra.extra["metrics"][t]["exact_match"] for t in TASKS}
    em_b = {t: rb.extra["metrics"][t]["exact_match"] for t in TASKS}
    assert em_a != em_b  # else the order could not matter
    assert ev.evaluate_ensemble([a, b]).per_task == pytest.approx(em_a, abs=1e-12)
    assert ev.evaluate_ensemble([b, a]).per_task == pytest.approx(em_b, abs=1e-12)


def test_single_candidate_equals_evaluate(small_zoo, zoo_experts):
    ev = Evaluator.from_zoo(small_zoo, tasks=TASKS, metric="exact_match", max_samples=N)
    for c in (zoo_experts["brackets"], {}):
        one, ens = ev.evaluate(c), ev.evaluate_ensemble([c])
        assert ens.per_task == pytest.approx(one.per_task, abs=1e-12)
        assert ens.fitness == pytest.approx(one.fitness, abs=1e-12)
        assert "note" not in ens.extra
    f1 = Evaluator.from_zoo(small_zoo, tasks=["brackets"], metric="token_f1", max_samples=N)
    one, ens = f1.evaluate(zoo_experts["brackets"]), f1.evaluate_ensemble([zoo_experts["brackets"]])
    assert ens.extra["scored_by"] == "token_f1"
    for m in ("token_f1", "rouge_l", "bleu"):
        assert ens.extra["metrics"]["brackets"][m] == pytest.approx(one.extra["metrics"]["brackets"][m], abs=1e-12)
    assert ens.fitness == pytest.approx(one.fitness, abs=1e-12)


def test_bad_input(ev, zoo_experts):
    with pytest.raises(ConfigError, match="candidates"):
        ev.evaluate_ensemble([])
    with pytest.raises(ConfigError, match="sizes"):
        ev.evaluate_ensemble([{}, zoo_experts["brackets"]], sizes=[3])
    with pytest.raises(DataError, match="split `train`"):
        ev.evaluate_ensemble([{}], split="train")
