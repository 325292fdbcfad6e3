"""Run scale cells as Ray work: one :class:`CellWorker` actor per CPU slot (or GPU).

Actors are placed with a SPREAD placement group (``evomerge.distributed.cluster``), so a run
on a cluster uses every node; cells stream back as they finish, in whatever order. Each actor
loads the pool and the evaluator once from paths that every node must be able to read.
An actor that dies is restarted by Ray and its cell is sent again (a cell is idempotent).
"""

from __future__ import annotations

import weakref
from typing import Iterator, Sequence

from evomerge.config.sections import RayConfig
from evomerge.errors import EvomergeError
from evomerge.pipelines.scale.plan import Cell
from evomerge.pipelines.scale.work import CellOutput, CellWorker, ScaleContext

MAX_CELL_ATTEMPTS = 3
LIVE: "weakref.WeakSet[RayCellRunner]" = weakref.WeakSet()  # open runners (an interrupted run kills their actors)


class RayCellRunner:
    """Context manager owning the actors (and Ray itself when it started it).

    ``share``: on a CPU-only plan, the actors reserve no CPU and no placement group, so they run
    beside actors that hold the CPUs (the scale run's search slots): the cores that a search
    leaves idle (its driver-side steps, the wait for a stop decision, the last search alone)
    serve cells. A cell's result does not depend on where or beside what it runs (one thread,
    its own seeds). On a GPU plan ``share`` is ignored: the actors wait for their GPU bundles."""

    def __init__(self, ctx: ScaleContext, ray_cfg: RayConfig, *, share: bool = False):
        self.ctx = ctx
        self.ray_cfg = ray_cfg
        self.share = share
        self.actors: list = []
        self._pg = None
        self._started_ray = False
        self._running: dict = {}  # the cells in flight of the current run(): ref -> (cell, actor)

    def __enter__(self) -> "RayCellRunner":
        import dataclasses

        import ray

        from evomerge.distributed.cluster import (
            actor_options, cluster_resources, connect, create_placement_group, plan_actors,
        )

        self._started_ray = connect(self.ray_cfg)
        try:
            plan = plan_actors(self.ray_cfg, cluster_resources())
            shared = self.share and plan.num_gpus == 0
            if not shared:
                self._pg = create_placement_group(plan, self.ray_cfg.placement_timeout_s)
            ctx = dataclasses.replace(
                self.ctx, threads=max(1, int(plan.num_cpus)), device="cuda" if plan.num_gpus > 0 else self.ctx.device
            )
            actor_cls = ray.remote(CellWorker)
            self.actors = [
                actor_cls.options(**(_shared_options(self.ray_cfg.max_restarts) if shared else
                                     actor_options(plan, self._pg, i, self.ray_cfg.max_restarts))).remote(ctx)
                for i in range(plan.n_actors)
            ]
        except BaseException:
            self.__exit__(None, None, None)
            raise
        LIVE.add(self)
        return self

    @property
    def in_flight(self) -> int:
        """Cells sent to the actors and not yet yielded by :meth:`run`."""
        return len(self._running)

    def __exit__(self, *exc) -> None:
        from evomerge.distributed.cluster import release

        LIVE.discard(self)
        release(self.actors, self._pg, self._started_ray)
        self.actors, self._pg, self._started_ray = [], None, False

    def run(self, cells: Sequence[Cell]) -> Iterator[tuple[Cell, CellOutput]]:
        """Yield ``(cell, output)`` as cells finish; at most one cell in flight per actor. An
        actor gets its next cell before the finished one is yielded, so it computes while the
        caller writes the result (it sat idle for that time before)."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        todo = list(reversed(cells))  # pop() from the end keeps the given order
        attempts: dict[str, int] = {}
        idle = list(self.actors)
        running = self._running = {}

        def dispatch() -> None:
            while idle and todo:
                cell, actor = todo.pop(), idle.pop(0)
                running[actor.run.remote(cell)] = (cell, actor)

        while todo or running:
            dispatch()
            done, _ = ray.wait(list(running), num_returns=1)
            ref = done[0]
            cell, actor = running.pop(ref)
            try:
                out = ray.get(ref)
            except RayActorError as err:
                attempts[cell.id] = attempts.get(cell.id, 0) + 1
                if attempts[cell.id] >= MAX_CELL_ATTEMPTS:
                    raise EvomergeError(f"scale cell {cell.id}: its actor died {attempts[cell.id]} times ({err})") from None
                todo.append(cell)  # Ray restarts the actor (max_restarts); send the cell again
                idle.append(actor)
                continue
            except RayTaskError as err:
                cause = err.cause if isinstance(getattr(err, "cause", None), BaseException) else None
                if isinstance(cause, EvomergeError):
                    raise cause from None
                raise
            idle.append(actor)
            dispatch()
            yield cell, out


def _shared_options(max_restarts: int) -> dict:
    """Actor options without a CPU reservation or placement group (see ``RayCellRunner.share``)."""
    return {"num_cpus": 0, "num_gpus": 0, "max_restarts": max_restarts, "max_task_retries": 0}
