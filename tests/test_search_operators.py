"""Search operators against hand computations on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from evomerge.search import Recipe, materialize, velocity_key
from evomerge.search.operators import blx_alpha, mutate_tensor, pso_velocity
from evomerge.search.pso import Particle, move_recipe, pso_coefficients
from evomerge.search.recipe import derive_rng, derive_seed, key_seed


def td(a, b):
    return {"m::A": torch.tensor(a, dtype=torch.float32), "m::B": torch.tensor(b, dtype=torch.float32)}


STORE = {
    "x": td([[1.0, 2.0]], [[0.5], [1.0]]),
    "y": td([[3.0, -2.0]], [[1.5], [-1.0]]),
    "z": td([[0.0, 1.0]], [[2.0], [0.0]]),
}


def test_linear_crossover_is_the_weighted_sum():
    r = Recipe("c", "crossover", ("x", "y"), (0.25, 0.75), {"method": "linear"}, seed=1)
    out = materialize(r, STORE)
    assert set(out) == {"c"}
    # hand: 0.25*[1,2] + 0.75*[3,-2] = [2.5, -1.0]; 0.25*[.5,1] + .75*[1.5,-1] = [1.25, -0.5]
    torch.testing.assert_close(out["c"]["m::A"], torch.tensor([[2.5, -1.0]]))
    torch.testing.assert_close(out["c"]["m::B"], torch.tensor([[1.25], [-0.5]]))
    r2 = Recipe("i", "init_pair", ("x", "z"), (0.5, 0.5), {"method": "linear"}, seed=1)
    torch.testing.assert_close(materialize(r2, STORE)["i"]["m::A"], torch.tensor([[0.5, 1.5]]))


def test_pad_extrapolates_with_w_above_one():
    r = Recipe("p", "pad", ("x", "y"), (1.5, -0.5), {}, seed=0)
    # 1.5*[1,2] - 0.5*[3,-2] = [0, 4]
    torch.testing.assert_close(materialize(r, STORE)["p"]["m::A"], torch.tensor([[0.0, 4.0]]))


def test_expert_recipe_shares_tensors_and_missing_parent_is_named():
    out = materialize(Recipe("s0.0", "expert", ("x",), (1.0,)), STORE)
    assert out["s0.0"]["m::A"] is STORE["x"]["m::A"]
    with pytest.raises(KeyError, match="nope"):
        materialize(Recipe("q", "expert", ("nope",)), STORE)


def test_blx_bounds_and_distribution():
    g = torch.Generator().manual_seed(0)
    a, b = torch.zeros(200_000), torch.ones(200_000)
    child = blx_alpha([a, b], 0.5, g)
    # box [0 - .5, 1 + .5]: uniform -> mean .5, var (2^2)/12
    assert child.min() >= -0.5 and child.max() <= 1.5
    assert abs(child.mean().item() - 0.5) < 0.01
    assert abs(child.var().item() - 4 / 12) < 0.01
    assert ((child < 0) | (child > 1)).float().mean().item() == pytest.approx(0.5, abs=0.01)
    # per-coordinate bounds with swapped parents and alpha 0: inside [min, max]
    x, y = torch.tensor([1.0, -3.0, 2.0]), torch.tensor([0.0, 5.0, 2.0])
    c = blx_alpha([x, y], 0.0, torch.Generator().manual_seed(3))
    assert torch.all(c >= torch.minimum(x, y)) and torch.all(c <= torch.maximum(x, y))
    assert c[2] == 2.0  # I = 0: the box is a point


def test_blx_recipe_is_seeded():
    r = Recipe("b", "crossover", ("x", "y"), (0.5, 0.5), {"method": "blx", "blx_alpha": 1.2}, seed=7)
    one, two = materialize(r, STORE)["b"], materialize(r, STORE)["b"]
    torch.testing.assert_close(one["m::A"], two["m::A"])
    other = materialize(Recipe("b", "crossover", ("x", "y"), (0.5, 0.5), {"method": "blx", "blx_alpha": 1.2}, seed=8), STORE)
    assert not torch.equal(one["m::A"], other["b"]["m::A"])
    lo, hi = torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 2.0]])
    span = hi - lo
    assert torch.all(one["m::A"] >= lo - 1.2 * span) and torch.all(one["m::A"] <= hi + 1.2 * span)


def test_mutation_rate_and_sigma_statistics():
    n, rate, sigma = 100_000, 0.1, 0.5
    x = torch.full((n,), 2.0)
    y = mutate_tensor(x, sigma, rate, torch.Generator().manual_seed(1))
    changed = y != x
    frac = changed.float().mean().item()
    assert abs(frac - rate) < 4 * math.sqrt(rate * (1 - rate) / n)
    d = (y - x)[changed]
    assert abs(d.std().item() - sigma) < 0.02 and abs(d.mean().item()) < 0.02
    assert torch.equal(x, torch.full((n,), 2.0))  # input untouched
    assert torch.equal(mutate_tensor(x, sigma, 0.0, torch.Generator().manual_seed(1)), x)


def test_mutate_recipe_deterministic_and_key_order_independent():
    big = {"a::A": torch.zeros(50, 4), "b::B": torch.zeros(4, 50)}
    rev = dict(reversed(list(big.items())))
    r = Recipe("m", "mutate", ("p",), (1.0,), {"sigma": 1.0, "gene_mut_rate": 0.5}, seed=11)
    one, two = materialize(r, {"p": big})["m"], materialize(r, {"p": rev})["m"]
    for k in big:
        assert torch.equal(one[k], two[k])
    assert not torch.equal(one["a::A"], torch.zeros(50, 4))


def test_pso_velocity_hand_computed():
    x, v = torch.tensor([1.0, 0.0]), torch.tensor([0.5, -1.0])
    p, g, gw = torch.tensor([2.0, 2.0]), torch.tensor([0.0, 4.0]), torch.tensor([-1.0, 1.0])
    a = (0.1, 0.2, 0.3, 0.4)
    # 0.1*[.5,-1] + 0.2*[1,2] + 0.3*[-1,4] - 0.4*[-2,1] = [0.05+0.2-0.3+0.8, -0.1+0.4+1.2-0.4]
    torch.testing.assert_close(pso_velocity(x, v, p, g, gw, a), torch.tensor([0.75, 1.1]))


def test_pso_move_recipe_stored_velocity_and_step():
    store = {
        "x": {"k::A": torch.tensor([1.0, 0.0])}, velocity_key("x"): {"k::A": torch.tensor([0.5, -1.0])},
        "p": {"k::A": torch.tensor([2.0, 2.0])}, "g": {"k::A": torch.tensor([0.0, 4.0])},
        "w": {"k::A": torch.tensor([-1.0, 1.0])},
    }
    r = Recipe("n", "pso_move", ("x", "p", "g", "w"), (0.1, 0.2, 0.3, 0.4), {"step": 0.5, "velocity": "stored"}, seed=0)
    out = materialize(r, store)
    assert set(out) == {"n", "n/v"}
    torch.testing.assert_close(out["n/v"]["k::A"], torch.tensor([0.75, 1.1]))
    torch.testing.assert_close(out["n"]["k::A"], torch.tensor([1.375, 0.55]))
    # initial velocity towards another particle: v0 = ref - x = [1, 2] - [1, 0]
    r2 = Recipe("n", "pso_move", ("x", "p", "g", "w"), (1.0, 0.0, 0.0, 0.0),
                {"step": 1.0, "velocity": "diff", "velocity_ref": "ref"}, seed=0)
    out2 = materialize(r2, {**store, "ref": {"k::A": torch.tensor([1.0, 2.0])}})
    torch.testing.assert_close(out2["n"]["k::A"], torch.tensor([1.0, 2.0]))
    r3 = Recipe("n", "pso_move", ("x", "p", "g", "w"), (1.0, 0.0, 0.0, 0.0), {"step": 1.0, "velocity": "zero"}, seed=0)
    torch.testing.assert_close(materialize(r3, store)["n"]["k::A"], store["x"]["k::A"])


def test_cognitive_term_nonzero_when_pbest_is_elsewhere():
    part = Particle.new("x0", 1.0)
    part.moved("x1", 0.5)  # worse: pbest must stay at x0, not follow the position
    assert part.pbest == "x0" and part.id == "x1"
    r = move_recipe(part, "x2", gbest="x1", gworst="x1", coeffs=(0.0, 1.0, 0.0, 0.0), step=1.0,
                    init_velocity="zero", velocity_ref=None, seed=0, generation=2)
    store = {"x0": {"k": torch.tensor([3.0])}, "x1": {"k": torch.tensor([1.0])}, "x1/v": {"k": torch.tensor([0.0])}}
    out = materialize(r, store)
    torch.testing.assert_close(out["x2/v"]["k"], torch.tensor([2.0]))  # p - x = 3 - 1
    part.moved("x2", 2.0)
    assert part.pbest == "x2" and part.stale == 0


def test_pso_coefficients_normalised_and_scaled():
    rng = derive_rng(0, 1)
    draws = [pso_coefficients(rng, 0.4, 0.3, 0.3, 0.3) for _ in range(2000)]
    for a in draws[:50]:
        assert sum(a) == pytest.approx(1.0) and min(a) >= 0
    mean = torch.tensor(draws).mean(0)
    assert mean[0] > mean[1]  # inertia weight 0.4 > cognitive 0.3 on average
    assert pso_coefficients(rng, 0, 0, 0, 0) == (0.0, 0.0, 0.0, 0.0)
    assert pso_coefficients(rng, 0, 1, 0, 0) == (0.0, 1.0, 0.0, 0.0)


def test_half_precision_kept():
    h = {"k": torch.tensor([1.0, 2.0], dtype=torch.float16)}
    r = Recipe("c", "crossover", ("a", "b"), (0.5, 0.5), {"method": "linear"})
    assert materialize(r, {"a": h, "b": h})["c"]["k"].dtype == torch.float16


def test_seed_derivation_is_stable_and_distinct():
    assert derive_seed(0, 0, 1, 2) == derive_seed(0, 0, 1, 2)
    assert len({derive_seed(s, 0, g, k) for s in (0, 1, -1) for g in range(3) for k in range(3)}) == 27
    assert key_seed(5, "a::A") != key_seed(5, "a::B")
    assert 0 <= derive_seed(2**40, 3) < 2**63


@pytest.mark.parametrize("method", ["ties", "dare_ties", "magnitude_ties"])
def test_registry_crossover_matches_registry_per_key(method):
    from evomerge.merging.registry import get_merge_method
    from evomerge.search.operators import merge_spec

    params = merge_spec(method, 0.5, 0.0)["merge_params"]
    assert params["density"] == 0.5 and params.get("disjoint", "weighted") == "weighted"
    gen = torch.Generator().manual_seed(0)
    store = {"a": {"k": torch.randn(8, 8, generator=gen)}, "b": {"k": torch.randn(8, 8, generator=gen)}}
    r = Recipe("c", "crossover", ("a", "b"), (0.6, 0.4), {"method": method, "merge_params": params}, seed=3)
    got = materialize(r, store)["c"]["k"]
    fn = get_merge_method(method)
    # crossover weights (sum 1) reach the registry as they are, with the weighted disjoint mean
    want = fn(torch.stack([store["a"]["k"], store["b"]["k"]]), torch.tensor([0.6, 0.4]),
              generator=torch.Generator().manual_seed(key_seed(3, "k")), stats=None, **params)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_registry_crossover_of_identical_parents_keeps_magnitude(method):
    """Defect guard: a weight-normalised sum divided by the agreeing count would halve the child."""
    from evomerge.search.operators import merge_spec

    def crossover_params(m, density):
        return merge_spec(m, density, 0.0)["merge_params"]

    x = {"k": torch.tensor([[1.0, -2.0, 3.0, -4.0]])}
    r = Recipe("c", "crossover", ("a", "b"), (0.5, 0.5),
               {"method": method, "merge_params": crossover_params(method, 1.0)}, seed=0)
    torch.testing.assert_close(materialize(r, {"a": x, "b": x})["c"]["k"], x["k"])
    # DARE rescales survivors by 1/density
    if method == "dare_ties":
        big = {"k": torch.full((1, 40_000), 2.0)}
        r = Recipe("c", "crossover", ("a", "b"), (0.5, 0.5),
                   {"method": method, "merge_params": crossover_params(method, 0.5)}, seed=1)
        child = materialize(r, {"a": big, "b": big})["c"]["k"]
        # survivors are 2/0.5 = 4 and the disjoint mean over surviving parents keeps 4; a coordinate
        # is 0 only if both parents dropped it (prob 0.25): mean 0.75 * 4 = 3 (no rescale: 1.5)
        assert set(child.unique().tolist()) <= {0.0, 4.0}
        assert abs(child.mean().item() - 3.0) < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("op", ["linear", "ties", "dare_ties", "blx", "mutate", "pso_move"])
def test_results_stay_on_the_parents_device(op):
    dev = torch.device("cuda")
    cpu = {k: {"m::A": torch.randn(4, 6, generator=torch.Generator().manual_seed(i))} for i, k in enumerate("abcd")}
    cpu["a/v"] = {"m::A": torch.ones(4, 6)}
    gpu = {k: {kk: t.to(dev) for kk, t in v.items()} for k, v in cpu.items()}
    if op == "mutate":
        r = Recipe("n", "mutate", ("a",), (1.0,), {"sigma": 0.1, "gene_mut_rate": 0.5}, seed=1)
    elif op == "pso_move":
        r = Recipe("n", "pso_move", ("a", "b", "c", "d"), (0.1, 0.2, 0.3, 0.4), {"step": 0.5, "velocity": "stored"})
    else:
        from evomerge.search.operators import merge_spec

        params = merge_spec(op, 0.7, 0.5)
        r = Recipe("n", "crossover", ("a", "b"), (0.6, 0.4), params, seed=2)
    out = materialize(r, gpu)
    assert all(t.device.type == "cuda" for td in out.values() for t in td.values())
    if op in ("linear", "ties", "pso_move"):  # deterministic ops agree with the CPU result
        ref = materialize(r, cpu)
        torch.testing.assert_close(out["n"]["m::A"].cpu(), ref["n"]["m::A"])
