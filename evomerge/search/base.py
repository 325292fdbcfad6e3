"""Shared ask/tell bookkeeping: the pending batch, told fitness, history and the best so far."""

from __future__ import annotations

import math
from typing import Any

from evomerge.errors import ConfigError
from evomerge.search.recipe import STREAM_RECIPE, Phase, Recipe, derive_seed


def check_init_merges_fit(section: str, names, n_experts: int) -> None:
    """A start the registry cannot merge for a search of ``n_experts`` (slerp of other than 2) is
    refused before any work, naming the key, not when its recipe is first materialized (the
    searches' constructors, and scale for every k of its grid)."""
    from evomerge.merging import get_merge_method

    for name in names:
        try:
            get_merge_method(name).check_pool_size(n_experts)
        except ConfigError as err:
            raise ConfigError(f"`{section}.init_merges`: `{name}` cannot start a search of {n_experts} experts "
                              f"({err})") from None


class AskTell:
    """Base of :class:`Genome` and :class:`Swarm`.

    Subclasses implement ``_next_batch() -> list[Recipe]`` (called by :meth:`ask` when nothing
    is pending; may advance the state and return ``[]`` only when done) and
    ``_absorb(recipes, results)`` (called by :meth:`tell`).
    """

    kind = "base"

    def __init__(self, cfg: Any, n_experts: int, seed: int, prefix: str) -> None:
        self.cfg = cfg
        self.n_experts = int(n_experts)
        self.seed = int(seed)
        self.prefix = prefix
        self.generation = 0
        self.phase = Phase.INIT
        self.fitness: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []
        # best_*: the individual a search returns (the best initial one unless a later one beats it by
        # more than cfg.select_margin); top_*: the best scored (what the search's own moves follow)
        self.best_id: str | None = None
        self.best_fitness: float | None = None
        self.top_id: str | None = None
        self.top_fitness: float | None = None
        self.init_best_fitness: float | None = None
        self.worst_id: str | None = None  # all-time worst (GENOME+'s repel target)
        self.worst_fitness: float | None = None
        self._pending: list[Recipe] = []
        self._counter = 0  # recipes made in the current generation (ids and seeds)
        self._check_init_merges()

    def _check_init_merges(self) -> None:
        check_init_merges_fit(self.kind, getattr(self.cfg, "init_merges", None) or (), self.n_experts)

    # ------------------------------------------------------------------ public
    @property
    def done(self) -> bool:
        return self.phase == Phase.DONE

    def ask(self) -> list[Recipe]:
        """The recipes whose fitness is needed next (the same list until :meth:`tell`)."""
        if not self._pending and not self.done:
            self._pending = self._next_batch()
        return list(self._pending)

    def tell(self, results: dict[str, float]) -> None:
        """Fitness (validation, higher is better) of every recipe of the last :meth:`ask`."""
        want = {r.id for r in self._pending}
        if not want:
            raise ValueError("tell() without a pending ask()")
        got = set(results)
        if got != want:
            raise ValueError(
                f"tell() needs exactly the ids of the last ask(): missing {sorted(want - got)}, "
                f"unexpected {sorted(got - want)}"
            )
        clean: dict[str, float] = {}
        for k, v in results.items():
            f = float(v)
            if not math.isfinite(f):
                raise ValueError(f"tell(): fitness of {k} is {v!r}; it must be a finite number")
            clean[k] = f
        recipes, self._pending = self._pending, []
        for r in recipes:
            self._record(r, clean[r.id])
        self._absorb(recipes, clean)

    @property
    def population(self) -> list[str]:  # pragma: no cover - overridden
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    def _next_id_seed(self, tag: str) -> tuple[str, int]:
        """A new unique id and its seed, from (run seed, generation, index in the generation)."""
        k = self._counter
        self._counter += 1
        return f"{self.prefix}{tag}{self.generation}.{k}", derive_seed(self.seed, STREAM_RECIPE, self.generation, k)

    def _new(self, op: str, parents: tuple[str, ...], weights: tuple[float, ...], params: dict[str, Any], tag: str) -> Recipe:
        id_, seed = self._next_id_seed(tag)
        return Recipe(
            id=id_, op=op, parents=parents, weights=tuple(float(w) for w in weights), params=params,
            seed=seed, generation=self.generation,
        )

    def _record(self, recipe: Recipe, fit: float) -> None:
        self.fitness[recipe.id] = fit
        self.history.append(recipe.history_row(fit))
        self._offer_best(recipe.id, fit)
        if self.worst_fitness is None or fit < self.worst_fitness:
            self.worst_id, self.worst_fitness = recipe.id, fit

    def _offer_best(self, id_: str, fit: float) -> bool:
        if self.top_fitness is None or fit > self.top_fitness:
            self.top_id, self.top_fitness = id_, fit
        if self.phase == Phase.INIT:
            self.init_best_fitness = max(fit, self.init_best_fitness if self.init_best_fitness is not None else fit)
        elif self.init_best_fitness is not None and fit <= self.init_best_fitness + float(self.cfg.select_margin):
            return False  # within the margin of the best starting point: noise on the validation samples
        if self.best_fitness is None or fit > self.best_fitness:
            self.best_id, self.best_fitness = id_, fit
            return True
        return False

    def _pending_refs(self) -> set[str]:
        refs: set[str] = set()
        for r in self._pending:
            refs.update(r.input_keys())
        return refs

    # ------------------------------------------------------------------ state
    def _base_state(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "version": 1, "seed": self.seed, "n_experts": self.n_experts,
            "prefix": self.prefix, "cfg": self.cfg.model_dump(mode="json"),
            "generation": self.generation, "phase": self.phase, "counter": self._counter,
            "fitness": dict(self.fitness), "history": [dict(h) for h in self.history],
            "best_id": self.best_id, "best_fitness": self.best_fitness, "top_id": self.top_id,
            "top_fitness": self.top_fitness, "init_best_fitness": self.init_best_fitness,
            "worst_id": self.worst_id, "worst_fitness": self.worst_fitness,
            "pending": [r.to_dict() for r in self._pending],
        }

    def _load_base(self, d: dict[str, Any]) -> None:
        mine = {"kind": self.kind, "seed": self.seed, "n_experts": self.n_experts, "prefix": self.prefix,
                "cfg": self.cfg.model_dump(mode="json")}
        for key, val in mine.items():
            if d.get(key) != val:
                raise ConfigError(
                    f"{self.kind} checkpoint: `{key}` is {d.get(key)!r} but this run has {val!r}; "
                    "resume with the same configuration, seed and pool"
                )
        self.generation, self.phase, self._counter = int(d["generation"]), Phase(d["phase"]), int(d["counter"])
        self.fitness = {k: float(v) for k, v in d["fitness"].items()}
        self.history = [dict(h) for h in d["history"]]
        self.best_id, self.best_fitness = d["best_id"], d["best_fitness"]
        self.top_id, self.top_fitness = d.get("top_id", self.best_id), d.get("top_fitness", self.best_fitness)
        self.init_best_fitness = d.get("init_best_fitness")
        self.worst_id, self.worst_fitness = d.get("worst_id"), d.get("worst_fitness")
        self._pending = [Recipe.from_dict(r) for r in d["pending"]]
