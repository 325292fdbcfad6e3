"""Particle bookkeeping shared by Model Swarms and GENOME+ succession (ids and fitness only)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Sequence

import numpy as np

from evomerge.search.recipe import Op, Recipe, VelocityMode, expert_id


class VelocityState(StrEnum):
    """A particle's velocity: stored at ``velocity_key(id)``, never moved yet, or just restarted (zero)."""

    STORED = "stored"
    INIT = "init"
    ZERO = "zero"


@dataclass
class Particle:
    """One individual's search state.

    ``id``/``fit``: current position. ``pbest``/``pbest_fit``: the best position this particle
    has visited; a separate id, so ``p - x`` is non-zero once the particle moves away from it.
    ``velocity``: ``stored`` (at ``velocity_key(id)``), ``init`` (never moved: use the initial
    velocity mode) or ``zero`` (just restarted). ``stale``: moves since pbest last improved.
    """

    id: str
    fit: float
    pbest: str
    pbest_fit: float
    velocity: VelocityState = VelocityState.INIT
    stale: int = 0

    @classmethod
    def new(cls, id_: str, fit: float) -> "Particle":
        return cls(id=id_, fit=fit, pbest=id_, pbest_fit=fit)

    def moved(self, new_id: str, fit: float) -> None:
        """Record the evaluated new position; the personal best only changes if it improved."""
        self.id, self.fit, self.velocity = new_id, fit, VelocityState.STORED
        if fit > self.pbest_fit:
            self.pbest, self.pbest_fit, self.stale = new_id, fit, 0
        else:
            self.stale += 1

    def restart(self) -> None:
        """Go back to the personal best with zero velocity. ``stale`` is kept, as in Model
        Swarms: the particle restarts after every move until its personal best improves."""
        self.id, self.fit, self.velocity = self.pbest, self.pbest_fit, VelocityState.ZERO

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pso_coefficients(rng: np.random.Generator, inertia: float, cognitive: float, social: float, repel: float) -> tuple[float, ...]:
    """``[r_w*inertia, r_p*cognitive, r_s*social, r_b*repel]`` with ``r ~ U(0,1)``, normalised to sum 1."""
    a = rng.random(4) * np.array([inertia, cognitive, social, repel], dtype=float)
    total = float(a.sum())
    return tuple(float(x) for x in (a / total if total > 0 else a))


def move_recipe(
    p: Particle, new_id: str, *, gbest: str, gworst: str, coeffs: tuple[float, ...], step: float,
    init_velocity: str, velocity_ref: str | None, seed: int, generation: int,
    coef: dict[str, Any] | None = None,
) -> Recipe:
    """The ``pso_move`` recipe of particle ``p``.

    ``velocity_ref`` is the position the initial velocity points to (``x_j`` for a random other
    particle, or the global best); used only for a particle that has never moved. ``coef``:
    the inputs as coefficient vectors (``x v p g w`` of :mod:`evomerge.search.linear`, the
    velocity already resolved); the recipe then reads only their basis and makes no ``<id>/v``
    weights a later move needs.
    """
    params: dict[str, Any] = {"step": float(step)}
    if p.velocity == VelocityState.STORED:
        params["velocity"] = VelocityMode.STORED.value
    elif p.velocity == VelocityState.ZERO or init_velocity == "zero" or velocity_ref is None:
        params["velocity"] = VelocityMode.ZERO.value
    else:
        params["velocity"], params["velocity_ref"] = VelocityMode.DIFF.value, velocity_ref
    if coef is not None:
        from evomerge.search.linear import MOVE_INPUTS, pack

        params.update(pack(*(coef[k] for k in MOVE_INPUTS)))
    return Recipe(
        id=new_id, op=Op.PSO_MOVE.value, parents=(p.id, p.pbest, gbest, gworst), weights=coeffs,
        params=params, seed=seed, generation=generation,
    )


def velocity_ref(mode: str, i: int, particles: list[Particle], gbest: str, rng: np.random.Generator) -> str | None:
    """Target of the initial velocity of particle ``i``: ``x_j`` (random j != i), the best, or None."""
    if mode == "random" and len(particles) > 1:
        j = int(rng.integers(len(particles) - 1))
        return particles[j if j < i else j + 1].id
    if mode == "best":
        return gbest
    return None


def sum_recipes(search: Any, scales: Sequence[float], tag: str) -> list[Recipe]:
    """Initial individuals ``lambda * sum_i expert_i``, one per ``lambda`` in ``scales``: the
    task-arithmetic points a search can start from (weighted means of experts never reach them).
    In "ab" space each is the nearest point of the experts' rank (:func:`~evomerge.search.operators.low_rank_sum`)."""
    parents = tuple(expert_id(i) for i in range(search.n_experts))
    params = {"space": "ab"} if getattr(search.cfg, "space", "delta") == "ab" else {}
    return [search._new(Op.INIT_SUM, parents, (float(lam),) * len(parents), dict(params), tag) for lam in scales]


def merge_recipes(search: Any, methods: Sequence[str], tag: str) -> list[Recipe]:
    """Initial individuals: the registry's merge of every expert by each of ``methods`` (TIES,
    DARE-TIES at the registry's defaults), so a search starts where the registry ends."""
    parents = tuple(expert_id(i) for i in range(search.n_experts))
    return [search._new(Op.INIT_MERGE, parents, (1.0,) * len(parents), {"method": m}, tag) for m in methods]
