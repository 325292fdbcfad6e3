"""Build a search object by name from the top-level config (used by the evolve runner and driver)."""

from __future__ import annotations

from typing import Any

from evomerge.errors import ConfigError
from evomerge.search.genome import Genome
from evomerge.search.swarm import Swarm

SEARCHES = ("genome", "swarm")


def make_search(kind: str, config: Any, n_experts: int, seed: int, *, prefix: str = "") -> Genome | Swarm:
    """``Genome`` (with ``config.swarm`` for GENOME+ succession) or ``Swarm`` from an ``EvomergeConfig``."""
    if kind == "genome":
        return Genome(config.genome, n_experts, seed, swarm=config.swarm, prefix=prefix)
    if kind == "swarm":
        return Swarm(config.swarm, n_experts, seed, prefix=prefix)
    raise ConfigError(f"search must be one of {list(SEARCHES)}. Got {kind!r} instead.")
