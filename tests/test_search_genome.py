"""GENOME / GENOME+ ask/tell on a synthetic but real objective over small "ab" TensorDicts."""

from __future__ import annotations

import dataclasses
import json
from itertools import combinations

import numpy as np
import pytest
import torch

from evomerge.config.sections import GenomeConfig, SwarmConfig
from evomerge.errors import ConfigError
from evomerge.search import Genome, expert_id, materialize
from evomerge.search.recipe import derive_rng
from evomerge.search.selection import n_elites, roulette_pair, roulette_weights, select

from _search_helpers import DIM, flat, make_problem, run, unflat


CFG = GenomeConfig(init_sums=[], init_merges=[], mutation="gauss", population=8, generations=15, cross_rate=0.8, ind_mut_rate=0.3, gene_mut_rate=0.3, sigma=0.05,
                   early_stop_iter=15)


def test_init_pairs_are_distinct_shuffled_and_weights_normalised():
    s = Genome(GenomeConfig(init_sums=[], init_merges=[], population=10), 6, seed=3)
    batch = s.ask()
    assert len(batch) == 10 and all(r.op == "init_pair" for r in batch)
    pairs = [tuple(sorted(r.parents)) for r in batch]
    assert len(set(pairs)) == 10
    assert set(pairs) <= {(expert_id(a), expert_id(b)) for a, b in combinations(range(6), 2)}
    for r in batch:
        assert sum(r.weights) == pytest.approx(1.0) and min(r.weights) > 0
    assert pairs != [tuple(sorted(r.parents)) for r in Genome(GenomeConfig(init_sums=[], init_merges=[], population=10), 6, seed=4).ask()]
    assert s.ask() == batch  # idempotent until tell
    # coverage_reuse (default): more individuals than pairs reuse pairs with fresh weights
    few = Genome(GenomeConfig(init_sums=[], init_merges=[], population=5), 3, seed=0).ask()
    assert len(few) == 5 and len({r.parents for r in few}) == 3 and len({r.weights for r in few}) == 5


@pytest.mark.parametrize("mode", ["coverage", "coverage_reuse"])
def test_init_pairs_cover_every_expert(mode):
    cfg = GenomeConfig(preset="paper") if mode == "coverage" else GenomeConfig(init_sums=[], init_merges=[], population=10)
    for n in range(2, 13):
        pairs_total = n * (n - 1) // 2
        for seed in range(30):
            pairs = [tuple(sorted(r.parents)) for r in Genome(cfg, n, seed=seed).ask()]
            assert len(pairs) == (min(10, pairs_total) if mode == "coverage" else 10)
            assert {e for pr in pairs for e in pr} == {expert_id(i) for i in range(n)}  # every expert appears
            assert len(set(pairs)) == min(len(pairs), pairs_total)  # no pair twice before every pair is used


def test_paper_preset_clips_population_to_the_pairs_and_explicit_population_is_refused():
    paper = GenomeConfig(preset="paper")
    assert (paper.population, paper.generations, paper.crossover, paper.init_merge, paper.density,
            paper.early_stop, paper.init_pairs, paper.init_sums, paper.space) == (
        10, 10, "dare_ties", "dare_ties", 0.7, False, "coverage", [], "ab")
    assert GenomeConfig().init_sums and GenomeConfig().space == "delta"  # evomerge's own defaults differ
    for n, size in [(2, 1), (3, 3), (4, 6), (5, 10), (6, 10), (12, 10)]:
        batch = Genome(paper, n, seed=1).ask()
        assert len(batch) == size and len({r.parents for r in batch}) == size
        assert {e for r in batch for e in r.parents} == {expert_id(i) for i in range(n)}
        assert all(r.params["method"] == "dare_ties" and r.params["merge_params"]["density"] == 0.7 for r in batch)
    with pytest.raises(ConfigError, match="genome.population"):
        Genome(GenomeConfig(init_sums=[], init_merges=[], population=7, init_pairs="coverage"), 4, seed=0)
    with pytest.raises(ConfigError, match="genome.cross_rate"):
        GenomeConfig(preset="paper", cross_rate=0.8)
    with pytest.raises(ConfigError, match="genome.crossover"):
        GenomeConfig(init_sums=[], init_merges=[], crossover="no_such_method")
    with pytest.raises(ConfigError, match="genome.init_merge"):
        GenomeConfig(init_sums=[], init_merges=[], init_merge="no_such_method")
    again = GenomeConfig.model_validate(paper.model_dump(mode="json"))  # a dump of a preset reloads
    assert again == paper


def test_init_and_crossover_operators_are_separate():
    store, fit = make_problem()
    s = Genome(CFG.model_copy(update={"init_merge": "ties", "crossover": "linear", "cross_rate": 1.0}), 6, seed=0)
    run(s, store, fit, rounds=2)
    methods = {(h["op"], json.loads(h["params"]).get("method")) for h in s.history if h["op"] != "mutate"}
    assert methods == {("init_pair", "ties"), ("crossover", "linear")}


def test_genome_improves_over_best_expert():
    store, fit = make_problem()
    best_expert = max(fit(store[expert_id(i)]) for i in range(6))
    s = Genome(CFG, 6, seed=0)
    final = run(s, store, fit)
    assert s.done and s.best_fitness > best_expert + 0.5 * abs(best_expert)
    assert fit(final[s.best_id]) == pytest.approx(s.best_fitness)  # best_id's weights really score that
    ens = s.ensemble_ids(3)
    assert len(ens) == 3 and [s.fitness[i] for i in ens] == sorted((s.fitness[i] for i in ens), reverse=True)


def test_genome_plus_improves_and_reevaluates_moved():
    store, fit = make_problem(seed=1)
    best_expert = max(fit(store[expert_id(i)]) for i in range(6))
    s = Genome(CFG.model_copy(update={"succession": True, "max_population": 12}), 6, seed=0,
               swarm=SwarmConfig(step=0.5))
    final = run(s, store, fit)
    assert s.best_fitness > best_expert + 0.5 * abs(best_expert)
    moves = [h for h in s.history if h["op"] == "pso_move"]
    assert moves
    for pid in s.population:  # each individual carries the fitness of its own current weights
        assert s.fitness[pid] == pytest.approx(fit(final[pid]))
    assert cfg_pop(s) <= len(s.population) <= 12


def cfg_pop(s):
    return s.cfg.population


def test_same_seed_same_history_different_seed_differs():
    store, fit = make_problem()
    a, b, c = Genome(CFG, 6, seed=5), Genome(CFG, 6, seed=5), Genome(CFG, 6, seed=6)
    for s in (a, b, c):
        run(s, store, fit)
    assert a.history == b.history
    assert a.history != c.history


@pytest.mark.parametrize("succession", [False, True])
def test_state_dict_round_trip_mid_run(succession):
    store, fit = make_problem()
    cfg = CFG.model_copy(update={"succession": succession, "max_population": 10 if succession else None})
    full = Genome(cfg, 6, seed=2)
    run(full, store, fit)
    first = Genome(cfg, 6, seed=2)
    mid = run(first, store, fit, rounds=4)
    pending = first.ask()  # asked, not told: survives the checkpoint
    sd = json.loads(json.dumps(first.state_dict()))
    resumed = Genome(cfg, 6, seed=2)
    resumed.load_state_dict(sd)
    assert resumed.ask() == pending
    run(resumed, mid, fit)
    assert resumed.history == full.history and resumed.best_id == full.best_id


def test_load_state_dict_rejects_other_config():
    sd = Genome(CFG, 6, seed=2).state_dict()
    with pytest.raises(ConfigError, match="seed"):
        Genome(CFG, 6, seed=3).load_state_dict(sd)
    with pytest.raises(ConfigError, match="cfg"):
        Genome(CFG.model_copy(update={"sigma": 0.5}), 6, seed=2).load_state_dict(sd)


def test_selection_keeps_elites_and_returns_to_population_size():
    store, fit = make_problem()
    cfg = CFG.model_copy(update={"elite_percent": 0.25})
    s = Genome(cfg, 6, seed=1)
    store = dict(store)
    grew = False
    while not s.done:
        before = dict(zip(s.population, (s.fitness[i] for i in s.population)))
        recipes = s.ask()
        for r in recipes:
            store.update(materialize(r, store))
        res = {r.id: fit(store[r.id]) for r in recipes}
        grew |= len(before) + len(res) > cfg.population
        s.tell(res)
        assert len(s.population) == cfg.population
        if before:
            pool = {**before, **res}
            top = sorted(pool, key=lambda i: -pool[i])[: n_elites(0.25, cfg.population)]
            assert set(top) <= set(s.population)
            worst = min(pool, key=pool.get)
            assert worst not in s.population  # can never win a size-3 tournament
    assert grew


def test_select_unit():
    rng = derive_rng(0)
    fit = [5.0, 1.0, 3.0, 9.0, 0.0, 7.0, 2.0, 4.0]
    keep = select(fit, 4, 2, rng)
    assert len(keep) == 4 and len(set(keep)) == 4 and keep[:2] == [3, 5]
    assert 4 not in keep
    assert select(fit, 10, 2, rng) == list(range(8))
    # tournament pressure: over many draws the 3rd best survives more often than the 6th best
    counts = np.zeros(8)
    for t in range(400):
        for i in select(fit, 3, 1, derive_rng(1, t)):
            counts[i] += 1
    assert counts[3] == 400 and counts[4] == 0 and counts[0] > counts[6]


def test_roulette_handles_zero_and_negative_fitness():
    assert np.allclose(roulette_weights([0.2, 0.6]), [0.2, 0.6])
    w = roulette_weights([-3.0, -1.0, 0.0])
    assert np.all(w > 0) and w[2] > w[1] > w[0]
    assert np.allclose(roulette_weights([0.0, 0.0]), [1.0, 1.0])
    rng = derive_rng(9)
    draws = [roulette_pair([1.0, 3.0, 6.0], rng) for _ in range(4000)]
    assert all(i != j for i, j in draws)
    first = np.bincount([i for i, _ in draws], minlength=3) / 4000
    assert np.allclose(first, [0.1, 0.3, 0.6], atol=0.03)


def test_crossover_weights_are_normalised_parent_fitness():
    store, fit = make_problem()
    s = Genome(CFG.model_copy(update={"cross_rate": 1.0}), 6, seed=0)
    run(s, store, fit, rounds=2)
    rows = [h for h in s.history if h["op"] == "crossover"]
    assert rows
    for h in rows:
        f = [s.fitness[p] for p in h["parents"]]
        assert h["parents"][0] != h["parents"][1]
        assert sum(h["weights"]) == pytest.approx(1.0)
        # negative fitness: shifted shares, so the fitter parent gets the larger weight
        assert (h["weights"][0] > h["weights"][1]) == (f[0] > f[1])


def test_early_stop_when_best_does_not_improve():
    store, _ = make_problem()
    s = Genome(GenomeConfig(init_sums=[], init_merges=[], population=4, generations=50, early_stop_iter=3, cross_rate=1.0), 6, seed=0)
    run(s, store, lambda td: 1.0)  # nothing ever improves on the initial best
    # the original stops once the stale count exceeds early_stop_iter (`>`): 4 stale generations
    assert s.done and s.generation == 5 and s.stale_generations == 4
    off = Genome(GenomeConfig(init_sums=[], init_merges=[], population=4, generations=7, early_stop=False, cross_rate=1.0), 6, seed=0)
    run(off, store, lambda td: 1.0)
    assert off.done and off.generation == 8 and off.stale_generations == 7


def test_generations_limit_and_empty_generations():
    store, fit = make_problem()
    s = Genome(GenomeConfig(init_sums=[], init_merges=[], population=4, generations=3, cross_rate=0.0, ind_mut_rate=0.0, early_stop_iter=9), 6, seed=0)
    run(s, store, fit)  # no children at all: ask() skips empty generations and ends
    assert s.done and s.ask() == [] and len(s.history) == 4


def test_genome_plus_personal_best_not_aliased():
    store, fit = make_problem()
    s = Genome(GenomeConfig(init_sums=[], init_merges=[], population=4, succession=True, cross_rate=0.0, ind_mut_rate=0.0), 6, seed=0,
               swarm=SwarmConfig(init_velocity="random"))
    store = dict(store)
    init = s.ask()
    for r in init:
        store.update(materialize(r, store))
    s.tell({r.id: 0.0 for r in init})
    moves = s.ask()
    assert s.phase == "move" and all(r.op == "pso_move" for r in moves)
    for r in moves:
        store.update(materialize(r, store))
    s.tell({r.id: -1.0 for r in moves})  # every move got worse: personal bests stay put
    nxt = s.ask()
    assert all(r.op == "pso_move" for r in nxt)
    for r, first in zip(nxt, init):
        x, p = r.parents[0], r.parents[1]
        assert p == first.id and x != p
        cognitive_only = dataclasses.replace(r, weights=(0.0, 1.0, 0.0, 0.0))
        out = materialize(cognitive_only, store)
        assert float(flat(out[r.id + "/v"]).abs().sum()) > 0  # cognitive term p - x is non-zero


@pytest.mark.parametrize("mutation", ["gauss", "coeff"])
@pytest.mark.parametrize("succession", [False, True])
def test_referenced_ids_are_enough_to_continue(mutation, succession):
    """Freeing all but ``referenced_ids()`` after every round changes nothing; the coefficient
    mutation (the default in delta space) reads every expert, which were once left out."""
    store, fit = make_problem()
    cfg = CFG.model_copy(update={"succession": succession, "max_population": 10 if succession else None,
                                 "mutation": mutation})
    kept, full = Genome(cfg, 6, seed=4), Genome(cfg, 6, seed=4)
    final = run(kept, store, fit, gc=True)
    run(full, store, fit)
    assert kept.history == full.history
    assert kept.best_id in final and set(kept.ensemble_ids(3)) <= set(final)


def test_immigrate_and_errors():
    store, fit = make_problem()
    s = Genome(CFG, 6, seed=0)
    with pytest.raises(ValueError):
        s.immigrate({"x": 1.0})
    with pytest.raises(ValueError, match="pending"):
        s.tell({"nope": 1.0})
    batch = s.ask()
    with pytest.raises(ValueError, match="missing"):
        s.tell({batch[0].id: 1.0})
    with pytest.raises(ValueError, match="finite"):
        s.tell({r.id: float("nan") for r in batch})
    s.tell({r.id: -1.0 for r in batch})
    s.immigrate({"other/g3.1": 5.0})
    assert "other/g3.1" in s.population and s.best_id == "other/g3.1"
    with pytest.raises(ValueError, match="already"):
        s.immigrate({"other/g3.1": 5.0})
    with pytest.raises(ConfigError, match="max_population"):
        Genome(GenomeConfig(init_sums=[], init_merges=[], population=6, max_population=4), 6, seed=0)
    with pytest.raises(ConfigError, match="2 experts"):
        Genome(CFG, 1, seed=0)


def make_multitask_problem(n: int = 6, seed: int = 0):
    """Zero-centred task vectors on disjoint coordinates; the target is their sum (every task)."""
    g = torch.Generator().manual_seed(seed)
    block = DIM // n
    vecs = []
    for i in range(n):
        v = 0.02 * torch.randn(DIM, generator=g)
        v[i * block:(i + 1) * block] += 2.0 * torch.randn(block, generator=g)
        vecs.append(v)
    target = torch.stack(vecs).sum(0)
    store = {expert_id(i): unflat(v) for i, v in enumerate(vecs)}
    return store, lambda td: -float(((flat(td) - target) ** 2).sum())


@pytest.mark.parametrize("method", ["linear", "ties", "dare_ties", "blx"])
def test_every_crossover_method_runs_and_improves(method):
    store, fit = make_multitask_problem()
    best_expert = max(fit(store[expert_id(i)]) for i in range(6))
    cfg = CFG.model_copy(update={"crossover": method, "generations": 8, "density": 0.9, "blx_alpha": 0.3})
    s = Genome(cfg, 6, seed=0)
    final = run(s, store, fit)
    ops = {h["op"] for h in s.history}
    assert {"init_pair", "crossover"} <= ops
    assert all(json.loads(h["params"]).get("method") == method for h in s.history if h["op"] == "crossover")
    init_best = max(h["fitness"] for h in s.history if h["op"] == "init_pair")
    assert s.best_fitness > init_best and fit(final[s.best_id]) == pytest.approx(s.best_fitness)
    if method in ("ties", "dare_ties"):  # sign election + disjoint mean add tasks up: beats any expert
        assert s.best_fitness > best_expert


def test_make_search_from_top_level_config():
    from evomerge.config import config_from_dict
    from evomerge.search import Swarm, make_search

    cfg = config_from_dict({"genome": {"population": 4, "succession": True}, "swarm": {"step": 0.25}})
    g = make_search("genome", cfg, 5, seed=1, prefix="i0/")
    assert isinstance(g, Genome) and g.swarm.step == 0.25 and all(r.id.startswith("i0/") for r in g.ask())
    assert isinstance(make_search("swarm", cfg, 5, seed=1), Swarm)
    with pytest.raises(ConfigError, match="`search` must be one of"):
        make_search("cmaes", cfg, 5, seed=1)


def test_genome_plus_moves_toward_all_time_best_and_away_from_all_time_worst():
    store, _ = make_problem()
    s = Genome(GenomeConfig(init_sums=[], init_merges=[], population=6, generations=6, succession=True, cross_rate=0.8, ind_mut_rate=0.5,
                            early_stop=False), 6, seed=3)
    rng = np.random.default_rng(0)
    store, seen = dict(store), 0
    while not s.done:
        batch = s.ask()
        if s.phase == "move":
            told = [h["fitness"] for h in s.history]
            for r in batch:  # the research code's global max / min: over every individual told so far
                assert s.fitness[r.parents[2]] == max(told) and s.fitness[r.parents[3]] == min(told)
                seen += 1
        for r in batch:
            store.update(materialize(r, store))
        s.tell({r.id: float(rng.random()) for r in batch})
    assert seen > 6


def test_init_sums_are_task_arithmetic_points():
    store, _ = make_problem()
    s = Genome(GenomeConfig(population=4, init_sums=[0.5, 2.0], init_merges=[]), 6, seed=0)
    batch = s.ask()
    sums = [r for r in batch if r.op == "init_sum"]
    assert len(batch) == 6 and [r.weights[0] for r in sums] == [0.5, 2.0]
    total = sum(flat(store[expert_id(i)]) for i in range(6))
    for r in sums:  # hand: lambda * (e0 + ... + e5)
        torch.testing.assert_close(flat(materialize(r, store)[r.id]), r.weights[0] * total)
    s.tell({r.id: float(i) for i, r in enumerate(batch)})
    assert len(s.population) == 6  # the first selection brings it back to `population`


def test_init_merges_start_where_the_registry_ends():
    """`init_merges`: the registry's merge of every expert at its defaults (what the registry's
    TIES / DARE-TIES rows of a comparison give), beside the task-arithmetic points."""
    from evomerge.merging.apply import merge_tensordicts

    store, _ = make_problem()
    s = Genome(GenomeConfig(population=4, init_sums=[1.0], init_merges=["ties", "dare_ties"]), 6, seed=0)
    merges = [r for r in s.ask() if r.op == "init_merge"]
    assert [r.params["method"] for r in merges] == ["ties", "dare_ties"]
    experts = [store[expert_id(i)] for i in range(6)]
    for r in merges:
        got = materialize(r, store)[r.id]
        want = merge_tensordicts(r.params["method"], experts, seed=r.seed)
        assert all(torch.equal(got[k], want[k]) for k in want)
    ties = materialize(merges[0], store)[merges[0].id]
    total = sum(flat(e) for e in experts)
    assert not torch.allclose(flat(ties), total)  # trimmed and sign-elected: not the plain sum
    paper = GenomeConfig(preset="paper")
    assert paper.init_merges == [] and paper.select_margin == 0.0
    with pytest.raises(ConfigError, match=r"genome\.init_merges"):
        GenomeConfig(init_merges=["no_such_method"])
    with pytest.raises(ConfigError, match=r"genome\.init_merges"):
        GenomeConfig(init_merges=["linear"])
    with pytest.raises(ConfigError, match=r"genome\.select_margin"):
        GenomeConfig(preset="paper", select_margin=0.01)


def test_select_margin_keeps_the_best_start_unless_clearly_beaten():
    """Hand-made fitness: a later individual within the margin of the best initial one is not
    returned; one beyond it is. `top_id` is the best scored either way."""
    for margin, later, want_later in [(0.05, 0.53, False), (0.05, 0.56, True), (0.0, 0.5001, True)]:
        s = Genome(GenomeConfig(population=2, init_sums=[1.0], init_merges=[], generations=3, cross_rate=1.0,
                                early_stop=False, select_margin=margin), 3, seed=0)
        init = s.ask()
        s.tell({r.id: 0.5 if r.op == "init_sum" else 0.1 for r in init})
        start = next(r.id for r in init if r.op == "init_sum")
        batch = s.ask()
        s.tell({r.id: (later if i == 0 else 0.0) for i, r in enumerate(batch)})
        assert s.top_id == batch[0].id and s.top_fitness == later
        assert (s.best_id, s.best_fitness) == ((batch[0].id, later) if want_later else (start, 0.5))


def test_coeff_mutation_moves_along_the_experts():
    """`mutation: coeff` (the default in delta space): a mutant is its parent plus
    sum_i eps_i * expert_i (hand sum), eps drawn per expert; ab space keeps the papers' gauss."""
    store, _ = make_problem()
    s = Genome(GenomeConfig(population=4, init_sums=[1.0], init_merges=[], cross_rate=0.0, ind_mut_rate=1.0,
                            coeff_sigma=0.3), 6, seed=0)
    s.tell({r.id: 0.5 for r in s.ask() if store.update(materialize(r, store)) is None})
    mutants = s.ask()
    assert mutants and all(r.op == "mutate_coeff" for r in mutants)
    eps = [r.weights[1:] for r in mutants]
    assert all(len(e) == 6 for e in eps) and 0.1 < float(np.std(np.concatenate(eps))) < 0.6
    for r in mutants:
        want = flat(store[r.parents[0]]) + sum(w * flat(store[expert_id(i)]) for i, w in enumerate(r.weights[1:]))
        torch.testing.assert_close(flat(materialize(r, store)[r.id]), want)
    ab = Genome(GenomeConfig(population=4, init_sums=[], init_merges=[], cross_rate=0.0, ind_mut_rate=1.0, space="ab"), 6, 0)
    ab.tell({r.id: 0.5 for r in ab.ask()})
    assert {r.op for r in ab.ask()} == {"mutate"}
    assert GenomeConfig(preset="paper").mutation == "gauss"


def test_max_population_sizes_only_genome_plus():
    """Without succession nothing grows: the population is selected back to `population` (a tune
    space may switch succession off over a config that sets max_population)."""
    assert Genome(GenomeConfig(max_population=20, succession=True), 4, seed=0).target_size == 20
    assert Genome(GenomeConfig(max_population=20), 4, seed=0).target_size == GenomeConfig().population
