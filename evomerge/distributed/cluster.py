"""Connecting to Ray and deciding how many population actors run where.

``plan_actors`` is a pure function of the config and the cluster's resources, so the checks
that refuse impossible requests (more GPUs than exist, more CPU slots than exist) are tested
without Ray and run before any work starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from evomerge.config import RayConfig
from evomerge.errors import ConfigError


@dataclass(frozen=True)
class ActorPlan:
    """How many population actors to start and what each one reserves."""

    n_actors: int
    num_cpus: float
    num_gpus: float

    def bundles(self) -> list[dict[str, float]]:
        bundle = {"CPU": self.num_cpus}
        if self.num_gpus > 0:
            bundle["GPU"] = self.num_gpus
        return [dict(bundle) for _ in range(self.n_actors)]


def plan_actors(cfg: RayConfig, resources: Mapping[str, float]) -> ActorPlan:
    """Actor count and resources for ``cfg`` on a cluster offering ``resources``.

    One actor per GPU (``gpus_per_actor`` 1, or a fraction to share a GPU) when the cluster has
    GPUs; CPU actors (``cpus_per_actor`` each) otherwise. Raises :class:`ConfigError` when the
    request cannot be met, rather than leaving actors pending forever.
    """
    total_gpus = float(resources.get("GPU", 0.0))
    total_cpus = float(resources.get("CPU", 0.0))
    gpus = cfg.gpus_per_actor if cfg.gpus_per_actor is not None else (1.0 if total_gpus > 0 else 0.0)
    cpus = cfg.cpus_per_actor
    if gpus > 0:
        if total_gpus <= 0:
            raise ConfigError(
                f"`ray.gpus_per_actor` is {gpus:g} but the Ray cluster has no GPUs; "
                "set it to 0 to run CPU actors"
            )
        fit = math.floor(total_gpus / gpus + 1e-9)
        n = cfg.num_actors or fit
        if n * gpus > total_gpus + 1e-9:
            raise ConfigError(
                f"`ray.num_actors` x `ray.gpus_per_actor` = {n} x {gpus:g} = {n * gpus:g} GPUs requested, "
                f"but the Ray cluster has {total_gpus:g} GPU(s)"
            )
    else:
        fit = math.floor(total_cpus / cpus + 1e-9)
        if fit < 1:
            raise ConfigError(
                f"`ray.cpus_per_actor` is {cpus:g} but the Ray cluster has {total_cpus:g} CPU(s)"
            )
        n = cfg.num_actors or fit
    if n * cpus > total_cpus + 1e-9:
        raise ConfigError(
            f"`ray.num_actors` x `ray.cpus_per_actor` = {n} x {cpus:g} = {n * cpus:g} CPUs requested, "
            f"but the Ray cluster has {total_cpus:g} CPU(s)"
        )
    return ActorPlan(n_actors=int(n), num_cpus=float(cpus), num_gpus=float(gpus))


def connect(cfg: RayConfig) -> bool:
    """Join the cluster at ``cfg.address`` or start a local Ray; reuse one already running.

    Returns True when this call started Ray (so the caller should shut it down).
    """
    import ray

    if ray.is_initialized():
        return False
    if cfg.address:
        try:
            ray.init(address=cfg.address, log_to_driver=False)
        except ConnectionError as err:
            raise ConfigError(f"`ray.address`: cannot connect to Ray at {cfg.address!r} ({err})") from None
    else:
        # "local": a new Ray of our own, even if a `ray start` cluster runs on this machine
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    return True


def create_placement_group(plan: ActorPlan, timeout_s: float):
    """A SPREAD placement group with one bundle per actor, so actors land on distinct nodes
    where possible (one per GPU node on a GPU cluster)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    pg = placement_group(plan.bundles(), strategy="SPREAD")
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise ConfigError(
            f"could not place {plan.n_actors} actor(s) with {plan.bundles()[0]} each within "
            f"{timeout_s:g} s (`ray.placement_timeout_s`); the cluster offers {ray.available_resources()}"
        ) from None
    return pg


def actor_options(plan: ActorPlan, pg: Any, index: int, max_restarts: int) -> dict[str, Any]:
    """``.options(...)`` for actor ``index``: its bundle, and Ray-side restarts.

    Task retries stay off: a restarted actor has lost its individuals, so the coordinator
    restores them before it re-sends the work (see :mod:`evomerge.distributed.pool`).
    """
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {
        "num_cpus": plan.num_cpus,
        "num_gpus": plan.num_gpus,
        "max_restarts": max_restarts,
        "max_task_retries": 0,
        "scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_bundle_index=index
        ),
    }


def cluster_resources() -> dict[str, float]:
    import ray

    return dict(ray.cluster_resources())


def release(actors, pg, started_ray: bool) -> None:
    """Kill ``actors`` (no restarts), remove the placement group ``pg`` (if any), and stop Ray
    when the caller started it. Actors already gone are skipped."""
    import ray

    for a in actors:
        try:
            ray.kill(a, no_restart=True)
        except Exception:  # already gone
            pass
    if pg is not None:
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(pg)
    if started_ray:
        ray.shutdown()
