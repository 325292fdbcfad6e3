"""Model Swarms ask/tell on a synthetic but real objective over small "ab" TensorDicts."""

from __future__ import annotations

import json

import pytest
import torch

from evomerge.config.sections import GenomeConfig, SwarmConfig
from evomerge.errors import ConfigError
from evomerge.search import Genome, Swarm, expert_id, materialize, velocity_key

from _search_helpers import flat, make_problem, run


CFG = SwarmConfig(init_sums=[], init_merges=[], max_iter=40, patience=10)


def tell_all(s, store, value):
    """Materialise the next batch and tell every recipe the fitness ``value(recipe)``."""
    batch = s.ask()
    for r in batch:
        store.update(materialize(r, store))
    s.tell({r.id: value(r) for r in batch})
    return batch


def test_init_pads_particles():
    s = Swarm(SwarmConfig(init_sums=[], init_merges=[], max_particles=10), 4, seed=1)
    batch = s.ask()
    assert [r.op for r in batch] == ["expert"] * 4 + ["pad"] * 6
    assert [r.parents for r in batch[:4]] == [(expert_id(i),) for i in range(4)]
    for r in batch[4:]:
        w = r.weights[0]
        assert 0 <= w <= 2 and r.weights[1] == pytest.approx(1 - w) and r.parents[0] != r.parents[1]
    assert len(Swarm(SwarmConfig(init_sums=[], init_merges=[], max_particles=3), 4, seed=1).ask()) == 4


def test_swarm_improves_over_best_expert():
    store, fit = make_problem()
    best_expert = max(fit(store[expert_id(i)]) for i in range(6))
    s = Swarm(CFG.model_copy(update={"max_particles": 8}), 6, seed=0)
    final = run(s, store, fit)
    assert s.done and s.best_fitness > best_expert + 0.3 * abs(best_expert)
    assert fit(final[s.best_id]) == pytest.approx(s.best_fitness)
    ens = s.ensemble_ids(4)
    assert ens[0] == s.best_id and len(ens) == len(set(ens))


def test_same_seed_same_history_different_seed_differs():
    store, fit = make_problem()
    a, b, c = (Swarm(CFG, 6, seed=k) for k in (3, 3, 4))
    for s in (a, b, c):
        run(s, store, fit)
    assert a.history == b.history and a.history != c.history


def test_state_dict_round_trip_mid_run():
    store, fit = make_problem()
    full = Swarm(CFG, 6, seed=2)
    run(full, store, fit)
    part = Swarm(CFG, 6, seed=2)
    mid = run(part, store, fit, rounds=7)
    pending = part.ask()
    resumed = Swarm(CFG, 6, seed=2)
    resumed.load_state_dict(json.loads(json.dumps(part.state_dict())))
    assert resumed.ask() == pending
    run(resumed, mid, fit)
    assert resumed.history == full.history and resumed.best_id == full.best_id
    with pytest.raises(ConfigError, match="prefix"):
        Swarm(CFG, 6, seed=2, prefix="i1/").load_state_dict(part.state_dict())


def test_pso_step_decay_coefficients_and_global_worst():
    store, fit = make_problem()
    cfg = CFG.model_copy(update={"step": 1.0, "step_decay": 0.5, "min_step": 0.2, "max_iter": 5, "patience": 50})
    s = Swarm(cfg, 6, seed=0)
    run(s, store, fit)
    steps = sorted({(h["generation"], json.loads(h["params"])["step"]) for h in s.history if h["op"] == "pso_move"})
    assert [st for _, st in steps] == [1.0, 0.5, 0.25, 0.2, 0.2]
    for h in s.history:
        if h["op"] == "pso_move":
            assert sum(h["weights"]) == pytest.approx(1.0) and min(h["weights"]) >= 0
            x, p, g, gw = h["parents"]
            before = [r["fitness"] for r in s.history if r["generation"] < h["generation"] and r["op"] != "restart"]
            assert s.fitness[g] == max(before) and s.fitness[gw] == min(before)  # all-time best / worst
    per_particle = [h["weights"] for h in s.history if h["op"] == "pso_move" and h["generation"] == 1]
    assert len({tuple(w) for w in per_particle}) == len(per_particle)  # r drawn per particle


@pytest.mark.parametrize("mode", ["random", "zero", "best"])
def test_initial_velocity_modes(mode):
    store, fit = make_problem()
    s = Swarm(CFG.model_copy(update={"init_velocity": mode}), 6, seed=0)
    store = dict(store)
    tell_all(s, store, lambda r: fit(store[r.id]))
    first = s.ask()
    ids = s.population
    for i, r in enumerate(first):
        if mode == "random":
            assert r.params["velocity"] == "diff" and r.params["velocity_ref"] in ids
            assert r.params["velocity_ref"] != ids[i]
        elif mode == "best":
            assert r.params["velocity_ref"] == s.gbest
        else:
            assert r.params["velocity"] == "zero"
    for r in first:
        store.update(materialize(r, store))
    s.tell({r.id: fit(store[r.id]) for r in first})
    assert all(r.params["velocity"] == "stored" for r in s.ask())


def test_restart_to_personal_best_and_patience_stop():
    store, fit = make_problem()
    cfg = SwarmConfig(init_sums=[], init_merges=[], max_iter=100, patience=4, restart_patience=0.5)  # restart after 2 stale moves
    s = Swarm(cfg, 6, seed=0)
    store = dict(store)
    init = tell_all(s, store, lambda r: fit(store[r.id]))
    starts = [r.id for r in init]
    tell_all(s, store, lambda r: -1e6)  # every move is worse: no personal best improves
    assert s.restarts == 0
    second = tell_all(s, store, lambda r: -1e6)
    assert s.restarts == 6 and s.population == starts  # back at the personal bests
    restarts = [h for h in s.history if h["op"] == "restart"]
    assert {h["id"] for h in restarts} == set(starts) and {h["parents"][0] for h in restarts} == {r.id for r in second}
    nxt = s.ask()
    assert all(r.params["velocity"] == "zero" and r.parents[0] == r.parents[1] for r in nxt)
    # Model Swarms keeps restarting after every move until the personal best improves
    tell_all(s, store, lambda r: -1e6)
    assert s.restarts == 12 and s.population == starts
    better = {r.id for r in tell_all(s, store, lambda r: 1e6 if r.parents[0] == starts[0] else -1e6)}
    assert s.restarts == 17 and s.population[0] in better and s.population[1:] == starts[1:]
    while not s.done:
        tell_all(s, store, lambda r: -1e6)
    assert s.g_unchanged == cfg.patience  # g unchanged for `patience` moves


def test_max_iter_stop_and_ask_after_done():
    store, fit = make_problem()
    s = Swarm(SwarmConfig(init_sums=[], init_merges=[], max_iter=3, patience=100), 6, seed=0)
    run(s, store, fit)
    assert s.done and s.ask() == [] and len([h for h in s.history if h["op"] == "pso_move"]) == 18


def test_personal_best_not_aliased_after_worse_move():
    store, fit = make_problem()
    s = Swarm(SwarmConfig(init_sums=[], init_merges=[], max_iter=10, init_velocity="random"), 6, seed=0)
    store = dict(store)
    init = tell_all(s, store, lambda r: fit(store[r.id]))
    moved = tell_all(s, store, lambda r: -1e6)
    nxt = s.ask()
    for r, a, b in zip(nxt, init, moved):
        assert r.parents[:2] == (b.id, a.id)  # x = moved position, p = where it was better
        p_minus_x = flat(store[a.id]) - flat(store[b.id])
        assert float(p_minus_x.abs().sum()) > 0
        out = materialize(r.__class__(r.id, r.op, r.parents, (0.0, 1.0, 0.0, 0.0), r.params, r.seed), store)
        torch.testing.assert_close(flat(out[velocity_key(r.id)]), p_minus_x)


def test_referenced_ids_are_enough_to_continue():
    store, fit = make_problem()
    cfg = CFG.model_copy(update={"max_particles": 8, "patience": 3, "restart_patience": 0.7})
    kept, full = Swarm(cfg, 6, seed=1), Swarm(cfg, 6, seed=1)
    final = run(kept, store, fit, gc=True)
    run(full, store, fit)
    assert kept.history == full.history and kept.best_id in final
    assert len(final) < len(full.fitness)


def test_errors():
    with pytest.raises(ConfigError, match="2 experts"):
        Swarm(CFG, 1, seed=0)
    s = Swarm(CFG, 3, seed=0)
    batch = s.ask()
    with pytest.raises(ValueError, match="unexpected"):
        s.tell({**{r.id: 1.0 for r in batch}, "zz": 1.0})


def test_init_sums_join_the_experts_and_count_toward_max_particles():
    s = Swarm(SwarmConfig(init_sums=[1.0], init_merges=[], max_particles=8), 4, seed=0)
    assert [r.op for r in s.ask()] == ["expert"] * 4 + ["init_sum"] + ["pad"] * 3
    assert [r.op for r in Swarm(SwarmConfig(init_sums=[1.0, 2.0], init_merges=[]), 3, seed=0).ask()] == ["expert"] * 3 + ["init_sum"] * 2


def test_swarm_preset_and_init_merges_refusals_name_the_key():
    paper = SwarmConfig(preset="paper")
    assert paper.init_merges == [] and paper.select_margin == 0.0 and paper.init_sums == []
    with pytest.raises(ConfigError, match=r"swarm\.max_iter"):
        SwarmConfig(preset="paper", max_iter=5)
    with pytest.raises(ConfigError, match=r"swarm\.select_margin"):
        SwarmConfig(preset="paper", select_margin=0.01)
    with pytest.raises(ConfigError, match=r"swarm\.init_merges"):
        SwarmConfig(init_merges=["no_such_method"])
    s = Swarm(SwarmConfig(init_sums=[1.0], init_merges=["ties"]), 3, seed=0)
    assert [r.op for r in s.ask()] == ["expert"] * 3 + ["init_sum", "init_merge"]


@pytest.mark.parametrize("cls, cfg", [(Swarm, SwarmConfig), (Genome, GenomeConfig)])
def test_a_start_the_registry_cannot_merge_is_refused_at_construction(cls, cfg):
    """search_api.md: constructors refuse what the registry rejects; slerp of 4 experts failed at
    its first materialize instead."""
    with pytest.raises(ConfigError, match=r"^`(swarm|genome)\.init_merges`: `slerp` cannot start a search of 4 experts"):
        cls(cfg(init_merges=["slerp"]), 4, 0)
    assert cls(cfg(init_merges=["slerp"]), 2, 0).n_experts == 2
