"""Recipes: the small data a search hands out instead of weights, and the seeding helpers.

A recipe names a new individual, the operator that makes it, the ids of the individuals it is
made from and a seed; whoever holds the parents' weights materialises it
(:func:`evomerge.search.operators.materialize`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from evomerge import seeding

# Tags keep the random streams of different decisions independent.
STREAM_RECIPE = 0
STREAM_DECIDE = 1


class Op(StrEnum):
    """How a recipe makes its individual (the value is what histories and checkpoints hold)."""

    EXPERT = "expert"  # a copy of one expert
    PAD = "pad"  # Model Swarms padding: w*p1 + (1-w)*p2
    INIT_PAIR = "init_pair"
    INIT_SUM = "init_sum"  # lambda * (sum of every expert): a task-arithmetic point (in "ab" space its
    # nearest point of the experts' LoRA rank: params {"space": "ab"})
    INIT_MERGE = "init_merge"  # a merge-registry method of every expert at its defaults (TIES, DARE-TIES)
    CROSSOVER = "crossover"
    MUTATE = "mutate"
    MUTATE_COEFF = "mutate_coeff"  # x + sum_i eps_i * expert_i (parents: x, then every expert)
    PSO_MOVE = "pso_move"


class VelocityMode(StrEnum):
    """Where a ``pso_move`` takes the particle's previous velocity from."""

    STORED = "stored"  # at velocity_key(x)
    DIFF = "diff"  # store[params["velocity_ref"]] - x (initial velocity)
    ZERO = "zero"


class Phase(StrEnum):
    """Where a search is: which batch ``ask`` hands out next."""

    INIT = "init"
    MOVE = "move"  # Model Swarms / GENOME+ PSO moves
    BREED = "breed"  # GENOME crossover and mutation
    DONE = "done"


def history_row(generation: int, id_: str, op: str, fitness: float, *, parents=(), weights=(), seed: int = 0,
                params: dict[str, Any] | None = None) -> dict[str, Any]:
    """One row of a search's history (recipes, restarts and immigrants alike)."""
    return {
        "generation": int(generation), "id": id_, "op": str(op), "parents": list(parents),
        "weights": [float(w) for w in weights], "seed": int(seed),
        "params": json.dumps(params or {}, sort_keys=True), "fitness": float(fitness),
    }


def expert_id(i: int) -> str:
    """Store key of expert ``i`` of the pool (0-based, pool order)."""
    return f"e{i}"


def velocity_key(id_: str) -> str:
    """Store key of the velocity that belongs to position ``id_`` (Swarm, GENOME+)."""
    return f"{id_}/v"


def derive_seed(*words: int) -> int:
    """A 63-bit seed derived from integers (run seed, stream, generation, index): :mod:`evomerge.seeding`."""
    return seeding.derive_seed(*words)


def derive_rng(*words: int) -> np.random.Generator:
    """A numpy Generator derived from integers; no state needs saving to reproduce it."""
    return seeding.derive_rng(*words)


def key_seed(seed: int, key: str) -> int:
    """Seed for one tensor key, so results do not depend on the order keys are visited."""
    return seeding.tensor_seed(seed, key, salt="search")  # apart from the merge operators' per-key draws


@dataclass(frozen=True)
class Recipe:
    """How to make one new individual.

    ``op``: ``expert``, ``pad``, ``init_pair``, ``crossover``, ``mutate`` or ``pso_move``.
    ``weights``: merge weights of ``parents`` (``pso_move``: the normalised coefficients
    ``a0..a3`` for inertia, cognitive, social, repel). ``params``: operator parameters.
    """

    id: str
    op: str
    parents: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()
    params: dict[str, Any] = field(default_factory=dict, hash=False)
    seed: int = 0
    generation: int = 0

    @property
    def is_coefficient_move(self) -> bool:
        """A PSO move carrying its inputs as coefficients over ``params["basis"]`` (search/linear.py)."""
        return self.op == Op.PSO_MOVE and "basis" in self.params

    @property
    def is_low_rank_sum(self) -> bool:
        """An ``init_sum`` in "ab" space: the best rank-r factors of ``lambda * sum_i B_i A_i``
        (summing the factors themselves would give ``lambda^2 * sum_ij B_i A_j``); not linear in
        its parents."""
        return self.op == Op.INIT_SUM and self.params.get("space") == "ab"

    def input_keys(self) -> tuple[str, ...]:
        """Store keys :func:`materialize` reads (parents, and for a move its velocity or the
        velocity's reference). The one place that knows this: the Ray layer routes by it."""
        if self.is_coefficient_move:
            return tuple(self.params["basis"])
        keys = list(self.parents)
        if self.op == Op.PSO_MOVE:
            mode = VelocityMode(self.params.get("velocity", VelocityMode.STORED))
            if mode is VelocityMode.STORED:
                keys.append(velocity_key(self.parents[0]))
            elif mode is VelocityMode.DIFF:
                keys.append(self.params["velocity_ref"])
        return tuple(dict.fromkeys(keys))

    def output_keys(self) -> tuple[str, ...]:
        """Store keys :func:`materialize` returns (the new id, plus its velocity for a move)."""
        return (self.id, velocity_key(self.id)) if self.op == Op.PSO_MOVE else (self.id,)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["parents"] = list(self.parents)
        d["weights"] = list(self.weights)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        return cls(
            id=d["id"],
            op=str(d["op"]),
            parents=tuple(d.get("parents", ())),
            weights=tuple(float(w) for w in d.get("weights", ())),
            params=dict(d.get("params", {})),
            seed=int(d.get("seed", 0)),
            generation=int(d.get("generation", 0)),
        )

    def history_row(self, fitness: float) -> dict[str, Any]:
        return history_row(self.generation, self.id, self.op, fitness, parents=self.parents, weights=self.weights,
                           seed=self.seed, params=self.params)
