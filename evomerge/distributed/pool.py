"""The driver's side of the population actors: who holds which weights, who makes which
recipe, and what happens when an actor dies.

Every individual's weights live on the actor that made it; another actor that needs them as a
parent gets them straight from the owner through the object store (the owner's ``get_weights``
result is passed as an argument, so the bytes never pass through the driver). After each round
the driver keeps a numpy copy of every individual the search still references (it writes the
checkpoint from it); that copy is also what a restarted actor is restored from.

Fault handling: an actor that dies mid-round is restarted by Ray (``max_restarts``), comes
back with its experts (constructor arguments) but no individuals; the pool puts back the
individuals it owned and redoes the whole round. Materialisation and evaluation are
deterministic, so the redone round gives the same scores.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from typing import Any, Callable, Iterable, Mapping, Sequence

from evomerge.distributed.actors import EvalRow, NumpyDict
from evomerge.errors import EvomergeError

log = logging.getLogger(__name__)


class ActorLostError(EvomergeError):
    """An actor died more often than ``ray.max_restarts`` allows (or its node is gone for good)."""


class PopulationPool:
    """Population actors plus the map of where each individual's weights live.

    actors: Ray actor handles of :class:`~evomerge.distributed.actors.PopulationActor`.
    expert_keys: keys every actor holds from its constructor (or last ``reset``).
    max_restarts: per actor; a death beyond this raises :class:`ActorLostError`.
    reset_args: ``(args, kwargs)`` of ``PopulationActor.reset`` to re-send to a restarted actor.
    """

    def __init__(
        self,
        actors: Sequence[Any],
        expert_keys: Iterable[str],
        *,
        max_restarts: int = 3,
        reset_args: tuple[tuple, dict] | None = None,
    ) -> None:
        self.actors = list(actors)
        self.reset_args = reset_args  # ``PopulationActor.reset`` arguments for a restarted actor
        self.expert_keys = set(expert_keys)
        self.max_restarts = max_restarts
        self.location: dict[str, int] = {}
        self.snapshot: dict[str, NumpyDict] = {}
        self.restarts = [0] * len(self.actors)
        self.pids: list[int] = [0] * len(self.actors)
        self.on_dispatch: Callable[[int, "PopulationPool"], None] | None = None
        self.rounds = 0
        self._last_round: dict[str, Any] = {}  # output key -> recipe of the last round
        self.redone_rounds = 0
        self.timings = {"wall_s": 0.0, "fetch_s": 0.0}

    @property
    def n_actors(self) -> int:
        return len(self.actors)

    # ---------------------------------------------------------------- assignment
    def assign(self, recipes: Sequence[Any]) -> list[list[Any]]:
        """Split ``recipes`` evenly over actors, each preferring the actor that holds most of
        its inputs (ties: the least loaded, then the lowest index)."""
        cap = math.ceil(len(recipes) / self.n_actors)
        groups: list[list[Any]] = [[] for _ in range(self.n_actors)]
        for r in recipes:
            held = [0] * self.n_actors
            for k in r.input_keys():
                if k in self.location:
                    held[self.location[k]] += 1
            open_ = [i for i in range(self.n_actors) if len(groups[i]) < cap]
            best = max(open_, key=lambda i: (held[i], -len(groups[i]), -i))
            groups[best].append(r)
        return groups

    # ---------------------------------------------------------------- one round
    def evaluate(self, recipes: Sequence[Any]) -> dict[str, EvalRow]:
        """Materialise and score ``recipes`` (independent of each other); survive actor deaths."""
        import ray

        t0 = time.perf_counter()
        before = dict(self.location)
        while True:
            groups = self.assign(recipes)
            futures = self._dispatch(groups)
            if self.on_dispatch is not None:
                self.on_dispatch(self.rounds, self)
            try:
                rows = ray.get([f for f, _ in futures])
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as err:
                dead = self._recover(err)
                self.location = dict(before)
                self.redone_rounds += 1
                log.warning("actor(s) %s died during round %d; restored and redoing it", dead, self.rounds)
                continue
            break
        out: dict[str, EvalRow] = {}
        for (_, idx), batch in zip(futures, rows):
            for row in batch:
                out[row.id] = row
        self._last_round = {}
        for idx, group in enumerate(groups):
            for r in group:
                for key in r.output_keys():
                    self.location[key] = idx
                    self._last_round[key] = r
        self.rounds += 1
        self.timings["wall_s"] += time.perf_counter() - t0
        return out

    def _dispatch(self, groups: list[list[Any]]) -> list[tuple[Any, int]]:
        """Submit every cross-actor weight fetch of the round before any evaluation: an actor
        runs its calls in order, so a fetch queued behind the owner's evaluation would make
        the receiving actor wait for it and serialise the round."""
        work = []
        for idx, group in enumerate(groups):
            if not group:
                continue
            need: dict[int, set[str]] = defaultdict(set)
            for r in group:
                for k in r.input_keys():
                    if k in self.expert_keys:
                        continue
                    owner = self.location.get(k)
                    if owner is None:
                        raise KeyError(f"no actor holds {k!r} (needed by recipe {r.id})")
                    if owner != idx:
                        need[owner].add(k)
            refs = [self.actors[o].get_weights.remote(sorted(ks)) for o, ks in sorted(need.items())]
            work.append((idx, group, refs))
        return [(self.actors[idx].materialize_and_evaluate.remote([r.to_dict() for r in group], *refs), idx)
                for idx, group, refs in work]

    # ---------------------------------------------------------------- faults
    def record_pids(self) -> list[dict[str, Any]]:
        """Remember each actor's process, to tell a restarted actor (new pid) from a live one."""
        import ray

        infos = ray.get([a.info.remote() for a in self.actors])
        self.pids = [i["pid"] for i in infos]
        return infos

    def _info(self, idx: int, wait_s: float = 600.0) -> dict[str, Any] | None:
        """The actor's info, waiting while Ray restarts it (the constructor loads the evaluator);
        None when it is gone for good."""
        import ray

        deadline = time.monotonic() + wait_s
        while True:
            try:
                return ray.get(self.actors[idx].info.remote(), timeout=wait_s)
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.5)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                return None

    def _recover(self, err: Exception) -> list[int]:
        """Find the actors Ray restarted (new pid), put back the individuals they owned."""
        import ray

        dead = []
        for idx in range(self.n_actors):
            info = self._info(idx)
            if info is None:
                raise ActorLostError(
                    f"population actor {idx} died and was not restarted "
                    f"(`ray.max_restarts` = {self.max_restarts})"
                ) from err
            if info["pid"] != self.pids[idx]:
                dead.append(idx)
                self.pids[idx] = info["pid"]
        if not dead:
            raise err
        for idx in dead:
            self.restarts[idx] += 1
            if self.reset_args is not None:  # the constructor's experts may be another run's
                args, kwargs = self.reset_args
                ray.get(self.actors[idx].reset.remote(*args, **kwargs))
            mine = {k: v for k, v in self.snapshot.items() if self.location.get(k) == idx}
            if mine:
                ray.get(self.actors[idx].put_weights.remote(mine))
        return dead

    # ---------------------------------------------------------------- bookkeeping
    def sync(self, referenced: Iterable[str]) -> None:
        """Keep only ``referenced`` individuals (on actors and in the snapshot); copy new ones
        into the driver's snapshot."""
        import ray

        t0 = time.perf_counter()
        keep = set(referenced) - self.expert_keys
        missing = [k for k in keep if k not in self.snapshot]
        unknown = [k for k in missing if k not in self.location]
        if unknown:
            raise KeyError(f"the search references {sorted(unknown)[:5]}, which no actor holds")
        fetch: dict[int, list[str]] = defaultdict(list)
        for k in missing:
            fetch[self.location[k]].append(k)
        owners = sorted(fetch)
        try:
            got = ray.get([self.actors[i].get_weights.remote(sorted(fetch[i])) for i in owners])
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as err:
            # an actor died after scoring its part of the round, before its new individuals
            # reached the driver: restart it and rebuild them from their recipes (deterministic)
            dead = self._recover(err)
            lost = [k for k in missing if self.location[k] in dead]
            self._rematerialize(lost)
            got = ray.get([self.actors[i].get_weights.remote(sorted(fetch[i])) for i in owners])
        for d in got:
            self.snapshot.update(d)
        # only now drop the rest: rebuilding a lost individual above may need its parents
        gone = [k for k in self.location if k not in keep]
        by_owner: dict[int, list[str]] = defaultdict(list)
        for k in gone:
            by_owner[self.location.pop(k)].append(k)
            self.snapshot.pop(k, None)
        drops = [self.actors[i].drop.remote(ks) for i, ks in by_owner.items()]
        try:
            ray.get(drops)
        except ray.exceptions.RayActorError:
            pass  # a restarted actor holds none of the dropped individuals anyway
        self.timings["fetch_s"] += time.perf_counter() - t0

    def _rematerialize(self, keys: Sequence[str]) -> None:
        """Recreate last-round individuals on the actors that own them (materialisation is
        deterministic; the scores computed on the way are discarded)."""
        import ray

        recipes = list({self._last_round[k].id: self._last_round[k] for k in keys}.values())
        if not recipes:
            return
        groups: list[list[Any]] = [[] for _ in self.actors]
        for r in recipes:
            groups[self.location[r.id]].append(r)
        ray.get([f for f, _ in self._dispatch(groups)])
        log.warning("rebuilt %d individual(s) lost with their actor: %s", len(recipes), sorted(r.id for r in recipes)[:5])

    def restore(self, weights: Mapping[str, NumpyDict], location: Mapping[str, int] | None = None) -> None:
        """Put checkpointed individuals back on the actors: where they were when ``location``
        fits this pool (so rounds split exactly as before), else round-robin in key order."""
        import ray

        keys = sorted(weights)
        loc = dict(location or {})
        if not all(0 <= loc.get(k, -1) < self.n_actors for k in keys):
            loc = {k: i % self.n_actors for i, k in enumerate(keys)}
        parts: list[dict[str, NumpyDict]] = [{} for _ in range(self.n_actors)]
        for k in keys:
            parts[loc[k]][k] = weights[k]
            self.location[k] = loc[k]
        ray.get([a.put_weights.remote(p) for a, p in zip(self.actors, parts) if p])
        self.snapshot = {k: weights[k] for k in keys}

    def holder(self, key: str) -> Any:
        """The actor that holds ``key`` (experts: the first actor)."""
        return self.actors[self.location.get(key, 0)]

    def reset_timings(self) -> None:
        import ray

        ray.get([a.take_timings.remote() for a in self.actors])
        self.timings = {k: 0.0 for k in self.timings}

    def stats(self) -> dict[str, Any]:
        import ray

        per_actor = ray.get([a.take_timings.remote() for a in self.actors])
        return {
            "rounds": self.rounds,
            "redone_rounds": self.redone_rounds,
            "restarts": list(self.restarts),
            **self.timings,
            "actors": per_actor,
        }
