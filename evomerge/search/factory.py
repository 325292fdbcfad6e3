"""The one list of search algorithms and the one factory that builds a search from the config."""

from __future__ import annotations

from typing import Any, Callable, get_args

from evomerge.config.sections import SearchName
from evomerge.errors import ConfigError
from evomerge.search.genome import Genome
from evomerge.search.swarm import Swarm

SEARCHES: tuple[str, ...] = get_args(SearchName)

_BUILD: dict[str, Callable[..., Genome | Swarm]] = {
    "genome": lambda cfg, n, seed, prefix: Genome(cfg.genome, n, seed, swarm=cfg.swarm, prefix=prefix),
    "swarm": lambda cfg, n, seed, prefix: Swarm(cfg.swarm, n, seed, prefix=prefix),
}
assert set(_BUILD) == set(SEARCHES)


def check_search_name(kind: Any, key: str = "search") -> str:
    """``kind`` if it names a search algorithm; else a ConfigError naming ``key``."""
    if kind not in SEARCHES:
        raise ConfigError(f"`{key}` must be one of {list(SEARCHES)}. Got {kind!r} instead.")
    return kind


def make_search(kind: str, config: Any, n_experts: int, seed: int, *, prefix: str = "") -> Genome | Swarm:
    """``Genome`` (with ``config.swarm`` for GENOME+ succession) or ``Swarm`` from an ``EvomergeConfig``."""
    return _BUILD[check_search_name(kind)](config, n_experts, seed, prefix)
