"""Start and stop the population actors of one run (a context manager around Ray)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from evomerge.config import EvomergeConfig
from evomerge.distributed.actors import EvalRow, PopulationActor
from evomerge.distributed.cluster import (
    ActorPlan, actor_options, cluster_resources, connect, create_placement_group, plan_actors, release,
)
from evomerge.distributed.pool import PopulationPool

if TYPE_CHECKING:  # the pipelines' inputs (experts + evaluator recipe); a type only, no upward import
    from evomerge.pipelines.inputs import EvolveInputs

log = logging.getLogger(__name__)
NumpyDict = dict[str, np.ndarray]


class Runtime:
    """Ray connection, placement group and population actors for one run.

    On enter: connect (or reuse a running Ray), check the request against the cluster's
    resources (:class:`~evomerge.errors.ConfigError` before anything starts), place one
    bundle per actor, start the actors with the experts put once into the object store.
    On exit: kill the actors, remove the placement group, stop Ray if this run started it.
    """

    def __init__(self, cfg: EvomergeConfig) -> None:
        self.cfg = cfg
        self.inputs: EvolveInputs | None = None
        self.started_ray = False
        self.pg = None
        self.plan: ActorPlan | None = None
        self.pool: PopulationPool = None  # type: ignore[assignment]
        self.infos: list[dict[str, Any]] = []
        self.starting: list = []  # the actors of a start in progress (see start)

    def __enter__(self) -> "Runtime":
        """Connect and check the request against the cluster (nothing is started yet)."""
        self.started_ray = connect(self.cfg.ray)
        try:
            self.plan = plan_actors(self.cfg.ray, cluster_resources())
        except BaseException:
            self.close()
            raise
        return self

    def start(self, inputs: EvolveInputs, rht: Any = None) -> PopulationPool:
        """Start the actors for ``inputs`` (one bundle each in a SPREAD placement group), or,
        when this runtime already has actors, reset them to ``inputs`` (a later run reuses them
        and their loaded evaluator). ``rht``: an RHTConfig applied to every candidate, or None."""
        import ray

        if self.plan is None:
            raise RuntimeError("Runtime.start() outside `with Runtime(cfg) as rt:`")
        self.inputs = inputs
        experts_ref = ray.put(inputs.experts)
        kwargs = {"fan_in_fan_out": inputs.fan_in_fan_out, "rht": rht}
        if self.pool is None:
            self.pg = create_placement_group(self.plan, self.cfg.ray.placement_timeout_s)
            cls = ray.remote(PopulationActor)
            threads = max(1, int(self.plan.num_cpus))
            # Constructor arguments are small and inline (no object-store references), so Ray
            # can restart an actor from them; its experts and evaluator come with `reset`,
            # which the pool sends again to a restarted actor.
            actors = [
                cls.options(**actor_options(self.plan, self.pg, i, self.cfg.ray.max_restarts)).remote(
                    num_threads=threads
                )
                for i in range(self.plan.n_actors)
            ]
        else:
            actors = self.pool.actors
        self.starting = actors  # before the pool exists: whoever must stop this runtime finds them here
        ray.get([a.reset.remote(experts_ref, inputs.evaluator, **kwargs) for a in actors])
        self.pool = PopulationPool(actors, inputs.experts, max_restarts=self.cfg.ray.max_restarts,
                                   reset_args=((experts_ref, inputs.evaluator), kwargs))
        self.infos = self.pool.record_pids()  # waits until every actor is up
        log.info("population actors: %s", self.infos)
        return self.pool

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        release(self.pool.actors if self.pool is not None else [], self.pg, self.started_ray)
        self.pg = None
        self.started_ray = False

    # ---------------------------------------------------------------- work outside the loop
    def score_experts(self) -> dict[str, float]:
        """Validation fitness of each single expert (the baseline a merge should beat)."""
        import ray

        keys = sorted(self.inputs.experts, key=lambda k: int(k[1:]))
        n = self.pool.n_actors
        futs = [self.pool.actors[j].evaluate_keys.remote(keys[j::n], "validation", True) for j in range(n) if keys[j::n]]
        rows = [r for batch in ray.get(futs) for r in batch]
        by_key = {r.id: r.fitness for r in rows}
        return {name: by_key[k] for name, k in zip(self.inputs.names, keys)}

    def evaluate_weights(self, weights: Mapping[str, NumpyDict], split: str, rht: Any = None) -> list[EvalRow]:
        import ray

        return ray.get(self.pool.actors[0].evaluate_weights.remote(dict(weights), split, rht))

    def ensemble(self, ids: Sequence[str], splits: Sequence[str]) -> dict[str, Any] | None:
        """Majority-vote ensemble scores of stored individuals, or None if unsupported."""
        import ray

        actor = self.pool.actors[0]
        ray.get(actor.put_weights.remote({k: self.pool.snapshot[k] for k in ids}))
        return {s: ray.get(actor.ensemble.remote(list(ids), s)) for s in splits}
