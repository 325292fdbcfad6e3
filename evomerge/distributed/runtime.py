"""Start and stop the population actors of one run (a context manager around Ray)."""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np

from evomerge.config import EvomergeConfig
from evomerge.distributed.actors import EvalRow, PopulationActor
from evomerge.distributed.cluster import ActorPlan, actor_options, cluster_resources, connect, create_placement_group, plan_actors
from evomerge.distributed.inputs import EvolveInputs
from evomerge.distributed.pool import PopulationPool

log = logging.getLogger(__name__)
NumpyDict = dict[str, np.ndarray]


class Runtime:
    """Ray connection, placement group and population actors for one run.

    On enter: connect (or reuse a running Ray), check the request against the cluster's
    resources (:class:`~evomerge.errors.ConfigError` before anything starts), place one
    bundle per actor, start the actors with the experts put once into the object store.
    On exit: kill the actors, remove the placement group, stop Ray if this run started it.
    """

    def __init__(self, cfg: EvomergeConfig, inputs: EvolveInputs) -> None:
        self.cfg, self.inputs = cfg, inputs
        self.started_ray = False
        self.pg = None
        self.plan: ActorPlan | None = None
        self.pool: PopulationPool = None  # type: ignore[assignment]

    def __enter__(self) -> "Runtime":
        import ray

        self.started_ray = connect(self.cfg.ray)
        try:
            self.plan = plan_actors(self.cfg.ray, cluster_resources())
            self.pg = create_placement_group(self.plan, self.cfg.ray.placement_timeout_s)
            experts_ref = ray.put(self.inputs.experts)
            rht = self.cfg.rht if (self.cfg.rht.enabled and self.cfg.rht.apply_to == "candidate") else None
            cls = ray.remote(PopulationActor)
            threads = max(1, int(self.plan.num_cpus))
            actors = [
                cls.options(**actor_options(self.plan, self.pg, i, self.cfg.ray.max_restarts)).remote(
                    experts_ref, self.inputs.evaluator, fan_in_fan_out=self.inputs.fan_in_fan_out,
                    rht=rht, num_threads=threads,
                )
                for i in range(self.plan.n_actors)
            ]
            self.pool = PopulationPool(actors, self.inputs.experts, max_restarts=self.cfg.ray.max_restarts)
            self.infos = self.pool.record_pids()  # waits until every actor is up
        except BaseException:
            self.close()
            raise
        log.info("started %d population actor(s): %s", self.plan.n_actors, self.infos)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        import ray

        if self.pool is not None:
            for a in self.pool.actors:
                try:
                    ray.kill(a, no_restart=True)
                except Exception:  # already gone
                    pass
        if self.pg is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self.pg)
            self.pg = None
        if self.started_ray:
            ray.shutdown()
            self.started_ray = False

    # ---------------------------------------------------------------- work outside the loop
    def score_experts(self) -> dict[str, float]:
        """Validation fitness of each single expert (the baseline a merge should beat)."""
        import ray

        keys = sorted(self.inputs.experts, key=lambda k: int(k[1:]))
        n = self.pool.n_actors
        futs = [self.pool.actors[j].evaluate_keys.remote(keys[j::n], "validation") for j in range(n) if keys[j::n]]
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
