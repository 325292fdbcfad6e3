"""Selection rules of GENOME, on fitness arrays (pure, explicit numpy Generator)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def roulette_weights(fitness: Sequence[float]) -> np.ndarray:
    """Non-negative roulette weights from fitness (higher is better).

    Positive fitness (accuracies) is used as is, like the paper. Otherwise the values are
    shifted so the worst gets a small positive share (1% of the range) and all-equal
    fitness gives equal shares, so zero or negative fitness never breaks the wheel.
    """
    f = np.asarray(fitness, dtype=float)
    if np.all(f > 0):
        return f
    lo, hi = float(f.min()), float(f.max())
    margin = 0.01 * (hi - lo) if hi > lo else 1.0
    return f - lo + margin


def roulette_pair(fitness: Sequence[float], rng: np.random.Generator) -> tuple[int, int]:
    """Two distinct indices drawn by fitness-proportional roulette (without replacement)."""
    w = roulette_weights(fitness)
    if len(w) < 2:
        raise ValueError("roulette_pair needs at least 2 individuals")
    first = int(rng.choice(len(w), p=w / w.sum()))
    rest = np.delete(np.arange(len(w)), first)
    wr = w[rest]
    second = int(rest[rng.choice(len(rest), p=wr / wr.sum())])
    return first, second


def n_elites(elite_percent: float, size: int) -> int:
    return max(1, int(round(elite_percent * size)))


def select(fitness: Sequence[float], size: int, n_elite: int, rng: np.random.Generator, tournament: int = 3) -> list[int]:
    """Indices of the survivors: the ``n_elite`` best, then size-``tournament`` tournaments.

    Each tournament draws its contestants without replacement from those not yet selected;
    the winner leaves the pool. Returns all indices when there are no more than ``size``.
    """
    f = np.asarray(fitness, dtype=float)
    if len(f) <= size:
        return list(range(len(f)))
    order = sorted(range(len(f)), key=lambda i: (-f[i], i))  # stable: ties go to the older index
    chosen = order[: min(n_elite, size)]
    pool = order[len(chosen):]
    while len(chosen) < size:
        k = min(tournament, len(pool))
        picks = rng.choice(len(pool), size=k, replace=False)
        winner = max((pool[int(j)] for j in picks), key=lambda i: (f[i], -i))
        chosen.append(winner)
        pool.remove(winner)
    return chosen
