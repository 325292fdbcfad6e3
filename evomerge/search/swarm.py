"""Model Swarms (Feng et al., ICML 2025) as an ask/tell state machine.

Round 0 evaluates the particles (the experts, padded to ``max_particles``); every later round
moves every particle once. Global best and worst are all-time; personal bests are separate ids.
Positions and velocities are kept as coefficient vectors over the experts (and the registry
merges, which no linear step makes), :mod:`evomerge.search.linear`: a move recipe carries its
inputs' coefficients, so whoever materialises it needs only that basis, never a velocity or an
earlier position as weights. A checkpoint from before (no ``coef`` in its state) goes on with
velocities held as weights, as it was written.
"""

from __future__ import annotations

from typing import Any

from evomerge.config.sections import SwarmConfig
from evomerge.errors import ConfigError
from evomerge.search import linear
from evomerge.search.base import AskTell
from evomerge.search.pso import (Particle, VelocityState, merge_recipes, move_recipe, pso_coefficients, sum_recipes,
                                 velocity_ref)
from evomerge.search.recipe import STREAM_DECIDE, Op, Phase, Recipe, derive_rng, expert_id, history_row, velocity_key

_INIT, _MOVE = 0, 1  # decision streams


class Swarm(AskTell):
    kind = "swarm"

    def __init__(self, cfg: SwarmConfig, n_experts: int, seed: int, *, prefix: str = "") -> None:
        if n_experts < 2:
            raise ConfigError(f"swarm: needs at least 2 experts, got {n_experts}")
        super().__init__(cfg, n_experts, seed, prefix)
        self.particles: list[Particle] = []
        self.step = float(cfg.step)
        self.gbest: str | None = None
        self.gworst: str | None = None
        self.gworst_fit: float | None = None
        self.g_unchanged = 0
        self.restarts = 0
        # id -> coefficients of a position / of the velocity of the particle at that position;
        # None: velocities held as weights (a checkpoint written before coefficients)
        self.coef: dict[str, linear.Coef] | None = {}
        self.vel: dict[str, linear.Coef] = {}

    # ------------------------------------------------------------------ views
    @property
    def population(self) -> list[str]:
        return [p.id for p in self.particles]

    def ensemble_ids(self, k: int) -> list[str]:
        """Top-k distinct personal bests by validation fitness."""
        best: dict[str, float] = {}
        for p in self.particles:
            best[p.pbest] = p.pbest_fit
        return sorted(best, key=lambda i: -best[i])[:k]

    def referenced_ids(self) -> set[str]:
        refs = self._pending_refs()
        for p in self.particles:
            refs.update((p.id, p.pbest))
            if p.velocity == VelocityState.STORED and self.coef is None:
                refs.add(velocity_key(p.id))
        refs.update(x for x in (self.gbest, self.gworst, self.best_id) if x)
        if self.coef is not None:  # the basis the referenced positions and velocities are made of
            refs.update(k for i in list(refs) for k in self.coef.get(i, ()))
            refs.update(k for p in self.particles for k in self.vel.get(p.id, ()))
        return refs

    # ------------------------------------------------------------------ ask
    def _next_batch(self) -> list[Recipe]:
        if self.phase == Phase.INIT:
            return self._init_batch()
        return self._move_batch()

    def _init_batch(self) -> list[Recipe]:
        out = [self._new(Op.EXPERT, (expert_id(i),), (1.0,), {}, "s") for i in range(self.n_experts)]
        out += sum_recipes(self, self.cfg.init_sums, "s") + merge_recipes(self, self.cfg.init_merges, "s")
        rng = derive_rng(self.seed, STREAM_DECIDE, _INIT, 0)
        for _ in range(max(0, (self.cfg.max_particles or 0) - len(out))):
            a, b = (int(x) for x in rng.choice(self.n_experts, size=2, replace=False))
            w = float(rng.uniform(0.0, 2.0))
            out.append(self._new(Op.PAD, (expert_id(a), expert_id(b)), (w, 1.0 - w), {}, "s"))
        return out

    def _move_batch(self) -> list[Recipe]:
        cfg = self.cfg
        rng = derive_rng(self.seed, STREAM_DECIDE, _MOVE, self.generation)
        out = []
        for i, p in enumerate(self.particles):
            coeffs = pso_coefficients(rng, cfg.inertia, cfg.cognitive, cfg.social, cfg.repel)
            ref = velocity_ref(cfg.init_velocity, i, self.particles, self.gbest, rng) if p.velocity == VelocityState.INIT else None
            new_id, seed = self._next_id_seed("s")
            out.append(move_recipe(
                p, new_id, gbest=self.gbest, gworst=self.gworst, coeffs=coeffs, step=self.step,
                init_velocity=cfg.init_velocity, velocity_ref=ref, seed=seed, generation=self.generation,
                coef=self._move_inputs(p, ref),
            ))
        return out

    def _move_inputs(self, p: Particle, ref: str | None) -> dict[str, linear.Coef] | None:
        """The move's inputs as coefficients; the velocity resolved as :func:`move_recipe` and
        :func:`~evomerge.search.operators.materialize` resolve it on weights."""
        if self.coef is None:
            return None
        x = self.coef[p.id]
        if p.velocity == VelocityState.STORED:
            v = self.vel[p.id]
        elif p.velocity == VelocityState.ZERO or self.cfg.init_velocity == "zero" or ref is None:
            v = {}
        else:  # initial velocity: ref - x
            v = linear.axpy([(1.0, self.coef[ref]), (-1.0, x)])
        return {"x": x, "v": v, "p": self.coef[p.pbest], "g": self.coef[self.gbest], "w": self.coef[self.gworst]}

    # ------------------------------------------------------------------ tell
    def _absorb(self, recipes: list[Recipe], results: dict[str, float]) -> None:
        if self.phase == Phase.INIT:
            self.particles = [Particle.new(r.id, results[r.id]) for r in recipes]
            self.phase = Phase.MOVE
        else:
            for p, r in zip(self.particles, recipes):
                p.moved(r.id, results[r.id])
        self._absorb_coef(recipes)
        g_before = self.gbest
        for p in self.particles:
            if self.gbest is None or p.fit > self.fitness[self.gbest]:
                self.gbest = p.id
            if self.gworst_fit is None or p.fit < self.gworst_fit:
                self.gworst, self.gworst_fit = p.id, p.fit
        if self.generation > 0:
            self.g_unchanged = 0 if self.gbest != g_before else self.g_unchanged + 1
            self._restart_stale()
            self.step = max(self.step * self.cfg.step_decay, self.cfg.min_step)
        self._prune_coef()
        self.generation += 1
        self._counter = 0
        if self.generation > self.cfg.max_iter or self.g_unchanged >= self.cfg.patience:
            self.phase = Phase.DONE

    def _absorb_coef(self, recipes: list[Recipe]) -> None:
        """Coefficients of the new positions and velocities; forget those nothing refers to."""
        if self.coef is None:
            return
        experts = {expert_id(i): {expert_id(i): 1.0} for i in range(self.n_experts)}
        for r in recipes:
            if r.is_coefficient_move:
                self.coef[r.id], self.vel[r.id] = linear.move(*linear.unpack(r.params), r.weights, float(r.params["step"]))
            else:  # an initial individual: a combination of experts, or its own basis entry (TIES, ...)
                self.coef[r.id] = linear.init_coefficients(r, {**experts, **self.coef}) or {r.id: 1.0}

    def _prune_coef(self) -> None:
        if self.coef is None:
            return
        live = {x for p in self.particles for x in (p.id, p.pbest)}
        live.update(x for x in (self.gbest, self.gworst, self.best_id, self.top_id) if x)
        self.coef = {k: c for k, c in self.coef.items() if k in live}
        self.vel = {p.id: self.vel[p.id] for p in self.particles
                    if p.velocity == VelocityState.STORED and p.id in self.vel}

    def _restart_stale(self) -> None:
        limit = self.cfg.restart_patience * self.cfg.patience
        for p in self.particles:
            if p.stale >= limit:
                left = p.id
                p.restart()
                self.restarts += 1
                self.history.append(history_row(self.generation, p.id, "restart", p.fit, parents=[left]))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        d = self._base_state()
        d.update(particles=[p.to_dict() for p in self.particles], step=self.step, gbest=self.gbest,
                 gworst=self.gworst, gworst_fit=self.gworst_fit, g_unchanged=self.g_unchanged,
                 restarts=self.restarts)
        if self.coef is not None:
            d.update(coef={k: dict(c) for k, c in self.coef.items()}, vel={k: dict(c) for k, c in self.vel.items()})
        return d

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self._load_base(d)
        self.particles = [Particle(**p) for p in d["particles"]]
        self.step, self.gbest, self.gworst = float(d["step"]), d["gbest"], d["gworst"]
        self.gworst_fit, self.g_unchanged, self.restarts = d["gworst_fit"], int(d["g_unchanged"]), int(d["restarts"])
        # without ``coef`` (written before coefficients): go on with velocities held as weights
        self.coef = {k: {b: float(c) for b, c in v.items()} for k, v in d["coef"].items()} if "coef" in d else None
        self.vel = {k: {b: float(c) for b, c in v.items()} for k, v in d.get("vel", {}).items()}
