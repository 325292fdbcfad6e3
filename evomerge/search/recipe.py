"""Recipes: the small data a search hands out instead of weights, and the seeding helpers.

A recipe names a new individual, the operator that makes it, the ids of the individuals it is
made from and a seed; whoever holds the parents' weights materialises it
(:func:`evomerge.search.operators.materialize`).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# Tags keep the random streams of different decisions independent.
STREAM_RECIPE = 0
STREAM_DECIDE = 1


def expert_id(i: int) -> str:
    """Store key of expert ``i`` of the pool (0-based, pool order)."""
    return f"e{i}"


def velocity_key(id_: str) -> str:
    """Store key of the velocity that belongs to position ``id_`` (Swarm, GENOME+)."""
    return f"{id_}/v"


def _seq(*words: int) -> np.random.SeedSequence:
    u = [int(w) % (1 << 64) for w in words]  # negative seeds map to distinct unsigned words
    return np.random.SeedSequence([w & 0xFFFFFFFF for w in u] + [w >> 32 for w in u])


def derive_seed(*words: int) -> int:
    """A 63-bit seed derived from integers (run seed, stream, generation, index)."""
    lo, hi = _seq(*words).generate_state(2, dtype=np.uint32)
    return ((int(hi) << 32) | int(lo)) & 0x7FFF_FFFF_FFFF_FFFF


def derive_rng(*words: int) -> np.random.Generator:
    """A numpy Generator derived from integers; no state needs saving to reproduce it."""
    return np.random.Generator(np.random.PCG64(_seq(*words)))


def key_seed(seed: int, key: str) -> int:
    """Seed for one tensor key, so results do not depend on the order keys are visited."""
    return derive_seed(seed, zlib.crc32(key.encode()))


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

    def input_keys(self) -> tuple[str, ...]:
        """Store keys :func:`materialize` reads (parents, and a velocity or its reference)."""
        keys = list(self.parents)
        if self.params.get("velocity") == "stored":
            keys.append(velocity_key(self.parents[0]))
        if "velocity_ref" in self.params:
            keys.append(self.params["velocity_ref"])
        return tuple(dict.fromkeys(keys))

    def output_keys(self) -> tuple[str, ...]:
        """Store keys :func:`materialize` returns (the new id, plus its velocity for a move)."""
        return (self.id, velocity_key(self.id)) if self.op == "pso_move" else (self.id,)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["parents"] = list(self.parents)
        d["weights"] = list(self.weights)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        return cls(
            id=d["id"],
            op=d["op"],
            parents=tuple(d.get("parents", ())),
            weights=tuple(float(w) for w in d.get("weights", ())),
            params=dict(d.get("params", {})),
            seed=int(d.get("seed", 0)),
            generation=int(d.get("generation", 0)),
        )

    def history_row(self, fitness: float) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "id": self.id,
            "op": self.op,
            "parents": list(self.parents),
            "weights": list(self.weights),
            "seed": self.seed,
            "params": json.dumps(self.params, sort_keys=True),
            "fitness": float(fitness),
        }
