"""Where a scale run's work runs: the search slots (one single-actor Runtime per CPU slot or GPU)."""

from __future__ import annotations

import contextlib

from evomerge.config import EvomergeConfig
from evomerge.config.overrides import override


@contextlib.contextmanager
def search_slots(cfg: EvomergeConfig):
    """One Runtime of a single population actor per actor the config's placement allows (one
    per CPU slot or GPU): each runs one search at a time, so several searches are in flight.
    A small population on many actors would leave most of them idle; a search's result does not
    depend on how many actors evaluate it."""
    from evomerge.distributed.cluster import cluster_resources, plan_actors
    from evomerge.distributed.runtime import Runtime

    n = plan_actors(cfg.ray, cluster_resources()).n_actors
    one = override(cfg, {"ray.num_actors": 1}, "one actor per search slot")
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(Runtime(one)) for _ in range(n)]


def cpu_only(cfg: EvomergeConfig) -> bool:
    """True when the actors of ``cfg`` on the connected cluster would hold no GPU."""
    from evomerge.distributed.cluster import cluster_resources, plan_actors

    return plan_actors(cfg.ray, cluster_resources()).num_gpus == 0
