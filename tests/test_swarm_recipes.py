"""Model Swarms' positions and velocities as coefficient vectors (evomerge/search/linear.py).

Checked against the iterated path: the same recipes with the coefficients stripped are the moves
on weights (``x' = x + step v'`` on fp32 tensors, velocities stored as weights), which
``materialize`` still does for GENOME+ and for checkpoints written before coefficients.
"""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import torch

from evomerge.config.sections import SwarmConfig
from evomerge.distributed.actors import PopulationActor
from evomerge.search import Swarm, expert_id, materialize, velocity_key
from evomerge.search import linear

SHAPES = {"l0.a": (3, 5), "l0.b": (5, 3), "l1.a": (4, 2)}
N = 5
# init merges make a basis entry of their own (TIES is not linear); restarts happen often
CFG = SwarmConfig(init_sums=[0.4], init_merges=["ties"], max_particles=8, max_iter=12, patience=100,
                  restart_patience=0.05, init_velocity="random")


def experts(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {expert_id(i): {k: torch.randn(s, generator=g) for k, s in SHAPES.items()} for i in range(N)}


def fit_of(id_: str) -> float:
    """Random fitness, a function of the id only (so any two runs take the same decisions)."""
    return float(np.random.default_rng(zlib.crc32(id_.encode())).random())


def flat(td) -> torch.Tensor:
    return torch.cat([td[k].flatten() for k in SHAPES])


def test_move_in_coefficients_by_hand():
    x, v, p, g, w = {"e0": 1.0}, {"e1": 0.5}, {"e0": 0.5, "e1": 0.5}, {"e1": 1.0}, {"e2": 1.0}
    a, step = (0.1, 0.2, 0.3, 0.4), 0.5
    new_x, new_v = linear.move(x, v, p, g, w, a, step)
    # v' = 0.1 v + 0.2 (p - x) + 0.3 (g - x) - 0.4 (w - x), per basis entry
    want_v = {"e0": 0.2 * (0.5 - 1) + 0.3 * (0 - 1) - 0.4 * (0 - 1), "e1": 0.05 + 0.2 * 0.5 + 0.3, "e2": -0.4}
    assert new_v == pytest.approx(want_v, abs=1e-15)
    assert new_x == pytest.approx({"e0": 1 + 0.5 * want_v["e0"], "e1": 0.5 * want_v["e1"], "e2": 0.5 * want_v["e2"]})
    params = linear.pack(x, v, p, g, w)
    assert params["basis"] == ["e0", "e1", "e2"] and linear.unpack(params)[2] == {"e0": 0.5, "e1": 0.5, "e2": 0.0}
    assert linear.basis_of({"s1.0": 1.0, "e10": 1.0, "e2": 1.0}) == ["e2", "e10", "s1.0"]
    with pytest.raises(ValueError, match="5 rows"):
        linear.unpack({"basis": ["e0"], "coef": [[1.0]]})


def test_coefficient_path_equals_the_iterated_moves_over_a_whole_run():
    """One Swarm run, random fitness: every position and velocity made from coefficients in one
    weighted sum equals the moves iterated on fp32 weights to float tolerance; the coefficient
    recipes read only the experts and the TIES start, never a velocity or an earlier position."""
    ex = experts()
    s = Swarm(CFG, N, seed=3)
    coef_store, iter_store = dict(ex), dict(ex)
    worst_abs = worst_rel = 0.0
    moves = restarts = 0
    while not s.done:
        recipes = s.ask()
        for r in recipes:
            coef_out = materialize(r, {k: coef_store[k] for k in r.input_keys()})
            iter_out = materialize(linear.on_weights(r), iter_store)
            assert set(coef_out) == set(iter_out) == set(r.output_keys())
            coef_store.update(coef_out)
            iter_store.update(iter_out)
            if r.op == "pso_move":
                moves += 1
                assert set(r.input_keys()) <= set(ex) | {h["id"] for h in s.history if h["op"] == "init_merge"}
                for k in r.output_keys():
                    d = (flat(coef_out[k]) - flat(iter_out[k])).abs().max().item()
                    worst_abs = max(worst_abs, d)
                    worst_rel = max(worst_rel, d / flat(iter_out[k]).abs().max().item())
                    torch.testing.assert_close(coef_out[k], iter_out[k], rtol=1e-5, atol=1e-5)
            else:  # initial individuals are the same recipes on both paths: bit for bit
                assert all(torch.equal(coef_out[r.id][k], iter_out[r.id][k]) for k in SHAPES)
        s.tell({r.id: fit_of(r.id) for r in recipes})
        restarts = s.restarts
    assert moves == 8 * 12 and restarts > 0
    assert 0 < worst_abs < 1e-5 and worst_rel < 1e-6, (worst_abs, worst_rel)
    # the coefficients do move the particles away from where they started
    assert (flat(coef_store[s.gbest]) - flat(ex[expert_id(0)])).abs().max() > 0.1


def test_the_actor_holds_moves_as_recipes_and_scores_them_as_made_directly():
    """Through the population actor: moves are held as recipes (no velocity, no position as
    weights), only the experts and the TIES start have weights, and every score equals the
    fitness of the weights ``materialize`` makes directly."""
    ex = experts(1)
    target = {k: torch.full(s, 0.3) for k, s in SHAPES.items()}

    def score(td) -> float:
        return -float(sum(((td[k] - target[k]) ** 2).sum() for k in SHAPES))

    class Result:
        def __init__(self, f):
            self.per_task, self.fitness, self.extra = {"t": f}, f, {}

    class Evaluator:
        def evaluate_many(self, candidates, split="validation"):
            return [Result(score(c)) for c in candidates]

    np_experts = {k: {n: t.numpy() for n, t in d.items()} for k, d in ex.items()}
    actor = PopulationActor(np_experts, lambda device: Evaluator(), device="cpu")
    s = Swarm(CFG.model_copy(update={"max_iter": 6}), N, seed=0)
    direct = dict(ex)
    while not s.done:
        recipes = s.ask()
        rows = actor.materialize_and_evaluate([r.to_dict() for r in recipes])
        for r, row in zip(recipes, rows):
            direct.update(materialize(r, {k: direct[k] for k in r.input_keys()}))
            assert row.fitness == score(direct[r.id]), r.id
        s.tell({row.id: row.fitness for row in rows})
        keep = s.referenced_ids()
        actor.drop([k for k in actor.keys() if k not in keep])
        merges = {h["id"] for h in s.history if h["op"] == "init_merge"}
        assert set(actor.store) <= set(ex) | merges
        assert not any(k.endswith("/v") for k in actor.store)
    got = actor.get_weights([s.best_id])[s.best_id]
    assert all(np.array_equal(got[k], direct[s.best_id][k].numpy()) for k in SHAPES)


def test_state_dict_round_trip_through_json_mid_run():
    ex = experts()
    full, cut = Swarm(CFG, N, seed=5), Swarm(CFG, N, seed=5)
    store = dict(ex)
    for _ in range(4):
        for r in full.ask():
            store.update(materialize(r, {k: store[k] for k in r.input_keys()}))
        for s in (full, cut):
            s.tell({r.id: fit_of(r.id) for r in s.ask()})
    # what a checkpoint keeps: the referenced individuals (and the experts)
    store = {k: v for k, v in store.items() if k in cut.referenced_ids() | set(ex)}
    state = json.loads(json.dumps(cut.state_dict()))
    assert state["coef"] and state["vel"]
    again = Swarm(CFG, N, seed=5)
    again.load_state_dict(state)
    assert again.coef == cut.coef and again.vel == cut.vel
    while not full.done:
        a, b = full.ask(), again.ask()
        assert [r.to_dict() for r in a] == [r.to_dict() for r in b]
        for r in a:
            store.update(materialize(r, {k: store[k] for k in r.input_keys()}))
        full.tell({r.id: fit_of(r.id) for r in a})
        again.tell({r.id: fit_of(r.id) for r in b})
    assert again.history == full.history
    assert full.referenced_ids() - set(store) == set()


def test_checkpoint_written_before_coefficients_goes_on_with_velocities_as_weights():
    """A state without ``coef`` (what the code before wrote) loads and continues as it was run:
    moves on weights with stored velocities; the decisions are those of the coefficient run."""
    ex = experts()
    new = Swarm(CFG, N, seed=7)
    old = Swarm(CFG, N, seed=7)
    state = old.state_dict()
    del state["coef"], state["vel"]
    old.load_state_dict(state)
    store = dict(ex)
    half = None
    while not old.done:
        a, b = new.ask(), old.ask()
        assert [linear.on_weights(r).to_dict() for r in a] == [r.to_dict() for r in b]
        for r in b:
            assert "basis" not in r.params
            store.update(materialize(r, {k: store[k] for k in r.input_keys()}))
        new.tell({r.id: fit_of(r.id) for r in a})
        old.tell({r.id: fit_of(r.id) for r in b})
        store = {k: v for k, v in store.items() if k in old.referenced_ids() | set(ex)}
        if half is None and old.generation == 4:
            half = json.loads(json.dumps(old.state_dict()))
            assert any(velocity_key(p.id) in store for p in old.particles)  # velocities held as weights
    resumed = Swarm(CFG, N, seed=7)
    resumed.load_state_dict(half)
    while not resumed.done:
        resumed.tell({r.id: fit_of(r.id) for r in resumed.ask()})
    assert resumed.history == old.history
    strip = [{k: v for k, v in h.items() if k != "params"} for h in new.history]
    assert strip == [{k: v for k, v in h.items() if k != "params"} for h in old.history]
