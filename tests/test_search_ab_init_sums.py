"""``init_sums`` in "ab" space: a start ``lambda * sum_i e_i`` summed factor by factor has the
product ``lambda^2 * sum_ij B_i A_j`` (on the default zoo 2.0 times task arithmetic's size off it at
lambda = 0.3); each start is now the LoRA factors of the experts' rank nearest to task arithmetic
``lambda * sum_i B_i A_i``, checked against a dense SVD."""

from __future__ import annotations

import pytest
import torch

from evomerge.config.sections import GenomeConfig, SwarmConfig
from evomerge.search import Genome, Swarm, expert_id, materialize
from evomerge.search.linear import init_coefficients
from evomerge.search.operators import low_rank_sum

from _search_helpers import make_problem, run


def _factors(n, rank, out, inp, seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(rank, inp, generator=g), torch.randn(out, rank, generator=g)) for _ in range(n)]


def _best_rank(dense: torch.Tensor, r: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(dense.double(), full_matrices=False)
    return (u[:, :r] * s[:r]) @ vh[:r]


@pytest.mark.parametrize("n, rank, out, inp", [(4, 3, 12, 10), (3, 2, 5, 40), (2, 4, 30, 6)])
def test_low_rank_sum_is_the_best_approximation_of_the_weighted_sum(n, rank, out, inp):
    factors = _factors(n, rank, out, inp, seed=n + rank)
    weights = [0.7, -0.2, 1.3, 0.4][:n]
    dense = sum(w * b @ a for (a, b), w in zip(factors, weights))
    a, b = low_rank_sum(factors, weights, rank)
    assert a.shape == (rank, inp) and b.shape == (out, rank)
    torch.testing.assert_close((b @ a).double(), _best_rank(dense, rank), atol=2e-5, rtol=1e-5)
    # the singular values split evenly: both factors carry sqrt(s)
    s = torch.linalg.svdvals(dense.double())[:rank]
    torch.testing.assert_close(torch.linalg.norm(b.double(), dim=0), s.sqrt(), atol=1e-5, rtol=1e-5)
    # a rank no smaller than the sum's: the sum itself, zero-padded past its rank
    big_a, big_b = low_rank_sum(factors, weights, n * rank + 2)
    torch.testing.assert_close(big_b @ big_a, dense, atol=2e-5, rtol=1e-5)
    assert torch.count_nonzero(big_a[n * rank:]) == 0 and torch.count_nonzero(big_b[:, n * rank:]) == 0


def test_inputs_are_not_modified_and_half_precision_comes_back_half():
    factors = [(a.half(), b.half()) for a, b in _factors(3, 2, 8, 6, seed=1)]
    copies = [(a.clone(), b.clone()) for a, b in factors]
    a, b = low_rank_sum(factors, [1.0, 1.0, 1.0], 2)
    assert a.dtype == b.dtype == torch.float16
    assert all(torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in zip(factors, copies))


@pytest.mark.parametrize("cls, cfg", [(Swarm, SwarmConfig), (Genome, GenomeConfig)])
def test_ab_space_starts_are_task_arithmetic_at_the_experts_rank(cls, cfg):
    store, _ = make_problem(n=5)
    search = cls(cfg(space="ab", init_sums=[0.5, 1.3], init_merges=[]), 5, 0)
    sums = [r for r in search.ask() if r.op == "init_sum"]
    assert [r.weights[0] for r in sums] == [0.5, 1.3] and all(r.is_low_rank_sum for r in sums)
    for r in sums:
        got = materialize(r, store)[r.id]
        for layer in ("l0", "l1"):
            ta = sum(r.weights[0] * store[expert_id(i)][f"{layer}::B"] @ store[expert_id(i)][f"{layer}::A"]
                     for i in range(5))
            rank = store[expert_id(0)][f"{layer}::A"].shape[0]
            torch.testing.assert_close((got[f"{layer}::B"] @ got[f"{layer}::A"]).double(), _best_rank(ta, rank),
                                       atol=1e-4, rtol=1e-4)
        # not a combination of the experts' factors: a basis entry of its own for Model Swarms
        assert init_coefficients(r, {expert_id(i): {expert_id(i): 1.0} for i in range(5)}) is None
    # delta space keeps the plain (linear) sum
    plain = [r for r in cls(cfg(init_sums=[0.5], init_merges=[]), 5, 0).ask() if r.op == "init_sum"]
    assert not plain[0].is_low_rank_sum and plain[0].params == {}


def test_a_swarm_in_ab_space_with_sums_runs_the_same_with_only_its_references_kept():
    store, fit = make_problem(n=5)
    cfg = SwarmConfig(space="ab", init_sums=[0.5, 1.0], init_merges=[], max_iter=6)
    kept, full = Swarm(cfg, 5, seed=3), Swarm(cfg, 5, seed=3)
    final = run(kept, store, fit, gc=True)
    run(full, store, fit)
    assert kept.history == full.history and kept.best_id in final
