"""GENOME / GENOME+ (Zhang et al. 2025) as an ask/tell state machine.

Phases per generation: ``move`` (GENOME+ only: one PSO move of every individual, each keeping
its own personal best) then ``breed`` (crossover and mutation children). After the breed
round the population is selected back to its size (elites, then size-3 tournaments).
A generation with no children skips straight to the next one, so ``ask`` returns a non-empty
batch until ``done``. Every recipe of one batch depends only on already-told ids.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np

from evomerge.config.sections import GenomeConfig, SwarmConfig, key_error
from evomerge.errors import ConfigError
from evomerge.search.base import AskTell
from evomerge.search.operators import merge_spec
from evomerge.search.pso import (Particle, VelocityState, merge_recipes, move_recipe, pso_coefficients, sum_recipes,
                                 velocity_ref)
from evomerge.search.recipe import STREAM_DECIDE, Op, Phase, Recipe, derive_rng, expert_id, history_row, velocity_key
from evomerge.search.selection import n_elites, roulette_pair, roulette_weights, select

_INIT, _MOVE, _BREED, _SELECT = 0, 1, 2, 3  # decision streams

#: the GenomeConfig fields each mutation reads, and no other part of a GENOME run does (tune
#: refuses a ``genome.<field>`` dimension whose mutation its trials never make);
#: tests/test_genome_mutation_fields.py checks it against what the mutants actually depend on
MUTATION_FIELDS: dict[str, tuple[str, ...]] = {"gauss": ("sigma", "gene_mut_rate"), "coeff": ("coeff_sigma",)}


def resolve_mutation(mutation: str, space: str) -> str:
    """The mutation ``genome.mutation`` makes in ``genome.space`` (one rule for the search and for
    tune's checks): ``auto`` is ``coeff`` in delta space (it moves the experts' coefficients, what a
    merge of task vectors can change; docs/search.md), ``gauss`` in ab space (the papers')."""
    return mutation if mutation != "auto" else ("coeff" if space == "delta" else "gauss")


def n_pairs(n_experts: int) -> int:
    return n_experts * (n_experts - 1) // 2


def init_population(cfg: GenomeConfig, n_experts: int) -> int:
    """Size of the initial population. ``coverage`` never reuses a pair: the paper preset takes
    min(N, pairs) like the research code; an explicit larger population is refused."""
    pairs = n_pairs(n_experts)
    if cfg.init_pairs != "coverage" or cfg.population <= pairs:
        return cfg.population
    if cfg.preset == "paper":
        return pairs
    raise key_error(  # (the CLI names where the two keys were set)
        ("genome.population", "genome.init_pairs"),
        f"`genome.population` ({cfg.population}) is larger than the {pairs} pairs of {n_experts} experts, and "
        "`genome.init_pairs: coverage` never reuses a pair; lower it or use init_pairs: coverage_reuse"
    )


def covering_pairs(n: int, size: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``size`` expert pairs in which every expert appears (``size >= ceil(n/2)`` allows it).

    In shuffled order: first the pairs of two experts not yet in, then pairs bringing one (at
    most one expert is left after the first pass), then the other pairs; only when ``size``
    exceeds the pairs does the same order repeat.
    """
    pairs = list(combinations(range(n), 2))
    order = [pairs[int(i)] for i in rng.permutation(len(pairs))]
    needed: set[int] = set(range(n))
    first: list[tuple[int, int]] = []
    for want in (2, 1):
        for pair in order:
            if pair not in first and len(needed & set(pair)) >= want:
                first.append(pair)
                needed -= set(pair)
    seq = first + [p for p in order if p not in first]
    return [seq[k % len(seq)] for k in range(size)]


class Genome(AskTell):
    kind = "genome"

    def __init__(
        self, cfg: GenomeConfig, n_experts: int, seed: int, *, swarm: SwarmConfig | None = None, prefix: str = ""
    ) -> None:
        if n_experts < 2:
            raise ConfigError(f"genome: needs at least 2 experts to pair, got {n_experts}")
        if cfg.max_population is not None and cfg.max_population < cfg.population:
            raise ConfigError(
                f"genome: `max_population` ({cfg.max_population}) must be >= `population` ({cfg.population})"
            )
        super().__init__(cfg, n_experts, seed, prefix)
        self.swarm = swarm or SwarmConfig()
        self._merge = merge_spec(cfg.crossover, cfg.density, cfg.blx_alpha)
        self._init_spec = merge_spec(cfg.init_merge or ("linear" if cfg.crossover == "blx" else cfg.crossover),
                                     cfg.density, cfg.blx_alpha)
        self.init_size = init_population(cfg, n_experts)
        self.individuals: list[Particle] = []
        self.step = float(self.swarm.step)
        self.stale_generations = 0
        self._gen_start_best: float | None = None

    # ------------------------------------------------------------------ views
    @property
    def population(self) -> list[str]:
        return [p.id for p in self.individuals]

    @property
    def target_size(self) -> int:
        """Size the population is selected back to (GENOME+ may grow to ``max_population``)."""
        if self.cfg.succession and self.cfg.max_population:
            return self.cfg.max_population
        return self.cfg.population

    def ensemble_ids(self, k: int) -> list[str]:
        """Top-k distinct individuals of the population by validation fitness."""
        order = sorted(self.individuals, key=lambda p: -p.fit)
        return list(dict.fromkeys(p.id for p in order))[:k]

    def referenced_ids(self) -> set[str]:
        refs = self._pending_refs()
        for p in self.individuals:
            refs.update((p.id, p.pbest))
            if p.velocity == VelocityState.STORED:
                refs.add(velocity_key(p.id))
        refs.update(x for x in (self.best_id, self.top_id if self.cfg.succession else None,
                                self.worst_id if self.cfg.succession else None) if x)
        if self.phase != Phase.DONE and resolve_mutation(self.cfg.mutation, self.cfg.space) == "coeff":
            refs.update(expert_id(i) for i in range(self.n_experts))  # every coefficient mutation reads them
        return refs

    def immigrate(self, results: dict[str, float]) -> None:
        """Add individuals (already in the store, e.g. from another island) with their fitness."""
        if self._pending or self.phase in (Phase.INIT, Phase.DONE):
            raise ValueError("immigrate() only between generations (nothing pending, after init, not done)")
        clash = set(results) & (set(self.population) | {r.id for r in self._pending})
        if clash:
            raise ValueError(f"immigrate(): ids already in this population: {sorted(clash)}")
        for id_, fit in results.items():
            self.individuals.append(Particle.new(id_, float(fit)))
            self.fitness[id_] = float(fit)
            self.history.append(history_row(self.generation, id_, "immigrant", float(fit)))
            self._offer_best(id_, float(fit))
        self._skip_empty_generations()

    # ------------------------------------------------------------------ ask
    def _next_batch(self) -> list[Recipe]:
        while not self.done:
            if self.phase == Phase.INIT:
                return self._init_batch()
            if self.phase == Phase.MOVE:
                return self._move_batch()
            batch = self._breed_batch()
            if batch:
                return batch
            self._end_generation()  # no child this generation
        return []

    def _init_batch(self) -> list[Recipe]:
        rng = derive_rng(self.seed, STREAM_DECIDE, _INIT, 0)
        out = []
        for a, b in covering_pairs(self.n_experts, self.init_size, rng):
            r = rng.random(2)
            out.append(self._new(Op.INIT_PAIR, (expert_id(a), expert_id(b)), tuple(r / r.sum()), dict(self._init_spec), "g"))
        return out + sum_recipes(self, self.cfg.init_sums, "g") + merge_recipes(self, self.cfg.init_merges, "g")

    def _move_batch(self) -> list[Recipe]:
        sw = self.swarm
        rng = derive_rng(self.seed, STREAM_DECIDE, _MOVE, self.generation)
        best, worst = self.top_id, self.worst_id  # all-time, like the research code's global max / min
        out = []
        for i, p in enumerate(self.individuals):
            coeffs = pso_coefficients(rng, sw.inertia, sw.cognitive, sw.social, sw.repel)
            ref = velocity_ref(sw.init_velocity, i, self.individuals, best, rng) if p.velocity == VelocityState.INIT else None
            new_id, seed = self._next_id_seed("g")
            out.append(move_recipe(p, new_id, gbest=best, gworst=worst, coeffs=coeffs, step=self.step,
                                   init_velocity=sw.init_velocity, velocity_ref=ref, seed=seed,
                                   generation=self.generation))
        return out

    def _breed_batch(self) -> list[Recipe]:
        cfg = self.cfg
        rng = derive_rng(self.seed, STREAM_DECIDE, _BREED, self.generation)
        pop = self.individuals
        fits = [p.fit for p in pop]
        shares = roulette_weights(fits)
        out = []
        for _ in range(len(pop) // 2):
            if rng.random() < cfg.cross_rate:
                i, j = roulette_pair(fits, rng)
                w = shares[[i, j]] / shares[[i, j]].sum()
                out.append(self._new(Op.CROSSOVER, (pop[i].id, pop[j].id), tuple(w), dict(self._merge), "g"))
        coeff = resolve_mutation(cfg.mutation, cfg.space) == "coeff"
        experts = tuple(expert_id(i) for i in range(self.n_experts))
        for p in pop:
            if rng.random() < cfg.ind_mut_rate:
                if coeff:  # a per-expert coefficient gene: move along the experts' own directions
                    eps = rng.normal(0.0, cfg.coeff_sigma, self.n_experts)
                    out.append(self._new(Op.MUTATE_COEFF, (p.id, *experts), (1.0, *eps), {}, "g"))
                    continue
                params = {"sigma": float(cfg.sigma), "gene_mut_rate": float(cfg.gene_mut_rate)}
                out.append(self._new(Op.MUTATE, (p.id,), (1.0,), params, "g"))
        return out

    # ------------------------------------------------------------------ tell
    def _absorb(self, recipes: list[Recipe], results: dict[str, float]) -> None:
        if self.phase == Phase.INIT:
            self.individuals = [Particle.new(r.id, results[r.id]) for r in recipes]
            self._gen_start_best = self.top_fitness
            self.generation, self._counter = 1, 0
            self.phase = Phase.MOVE if self.cfg.succession else Phase.BREED
        elif self.phase == Phase.MOVE:
            for p, r in zip(self.individuals, recipes):
                p.moved(r.id, results[r.id])  # moved individuals carry their new (re-evaluated) fitness
            self.phase = Phase.BREED
        else:
            self.individuals += [Particle.new(r.id, results[r.id]) for r in recipes]
            self._end_generation()
        self._skip_empty_generations()

    def _skip_empty_generations(self) -> None:
        """End generations that make no child now, so ``done`` is exact right after ``tell``."""
        while self.phase == Phase.BREED:
            counter = self._counter  # the dry run must not use up (or reset) this generation's ids
            empty = not self._breed_batch()  # derived RNG: ask() will draw the same batch again
            self._counter = counter
            if not empty:
                return
            self._end_generation()

    def _end_generation(self) -> None:
        size = self.target_size
        rng = derive_rng(self.seed, STREAM_DECIDE, _SELECT, self.generation)
        keep = select([p.fit for p in self.individuals], size, n_elites(self.cfg.elite_percent, size), rng)
        self.individuals = [self.individuals[i] for i in keep]
        improved = self._gen_start_best is None or (self.top_fitness or 0.0) > self._gen_start_best
        self.stale_generations = 0 if improved else self.stale_generations + 1
        self._gen_start_best = self.top_fitness
        if self.cfg.succession:
            self.step = max(self.step * self.swarm.step_decay, self.swarm.min_step)
        self.generation += 1
        self._counter = 0
        stop_early = self.cfg.early_stop and self.stale_generations > self.cfg.early_stop_iter  # `>` as the original
        if self.generation > self.cfg.generations or stop_early:
            self.phase = Phase.DONE
        else:
            self.phase = Phase.MOVE if self.cfg.succession else Phase.BREED

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        d = self._base_state()
        d.update(swarm_cfg=self.swarm.model_dump(mode="json"), individuals=[p.to_dict() for p in self.individuals],
                 step=self.step, stale_generations=self.stale_generations, gen_start_best=self._gen_start_best)
        return d

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if d.get("swarm_cfg") != self.swarm.model_dump(mode="json"):
            raise ConfigError("genome checkpoint: the swarm (succession) configuration differs from this run's")
        self._load_base(d)
        self.individuals = [Particle(**p) for p in d["individuals"]]
        self.step, self.stale_generations = float(d["step"]), int(d["stale_generations"])
        self._gen_start_best = d["gen_start_best"]
