"""The population actor: holds experts and individuals on its device, materialises recipes and
evaluates them.

A plain class (wrapped with ``ray.remote`` where it is started), so it runs and is tested
without Ray. Weights cross process boundaries only as ``{key: {tensor name: np.ndarray}}``
dicts, which Ray's object store shares without copying.

An individual made by an elementwise operator (initial pairs and sums, linear and BLX
crossovers, mutations, Model Swarms' padding, expert copies, and Model Swarms' moves, whose
recipes carry their inputs as coefficients over the experts: :mod:`evomerge.search.linear`)
is held as its recipe and rebuilt,
bit for bit, whenever it is read (as a parent, to be scored, or fetched), as long as that takes
at most ``MAX_REBUILD`` materialisations; when one of its inputs is dropped it gets its weights
first. The actor then holds weights for the registry merges, GENOME+'s moves and the
individuals that outlived their parents, not for a whole generation of parents and children.
Materialising is deterministic (:mod:`evomerge.search.operators`), so scores and weights are
those of a stored copy (benchmarks/model_scale.py measured the actor's peak;
tests/test_model_scale_fixes.py compares the two).
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from evomerge.distributed.heap import release_free_heap
from evomerge.experts.types import TensorDict, ab_to_lora

NumpyDict = dict[str, np.ndarray]
MAX_REBUILD = 3  # materialisations that rebuild an individual held as its recipe, at most


def td_to_numpy(td: Mapping[str, torch.Tensor]) -> NumpyDict:
    """CPU numpy copy of a TensorDict (bf16/fp16 are widened to fp32: numpy has no bf16)."""
    out: NumpyDict = {}
    for k, t in td.items():
        t = t.detach()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        out[k] = t.cpu().numpy()
    return out


def numpy_to_td(d: Mapping[str, np.ndarray], device: str | torch.device = "cpu") -> TensorDict:
    """Torch tensors on ``device`` from numpy arrays.

    Read-only arrays (Ray's object store hands them out so) are shared, not copied, on the CPU:
    a copy would hold every expert twice in the actor, once in the store pages it read and once
    in its heap (benchmarks/model_scale.py). Nothing writes a stored tensor in place (recipes,
    RHT and the evaluator make new tensors; tests/test_model_scale_fixes.py checks the arrays
    after a search). Writable arrays (a caller's own) are copied, and another device gets a
    copy made there straight from the array."""
    dev = torch.device(device)
    out: TensorDict = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for k, a in d.items():
            a = np.asarray(a)
            if dev.type == "cpu":
                out[k] = torch.from_numpy(a if not a.flags.writeable else a.copy())
            else:
                out[k] = torch.from_numpy(a).to(dev)
    return out


@dataclass(frozen=True)
class EvalRow:
    """What an evaluation sends back: small data only."""

    id: str
    per_task: dict[str, float]
    fitness: float
    extra: dict[str, Any]


class PopulationActor:
    """Experts plus a store of individuals, on one device.

    experts: ``{store key: numpy ab-dict}`` (``"e0"``, ``"e1"`` ...), the same on every actor.
    make_evaluator: picklable ``device -> Evaluator`` (built here, once, next to the weights).
    fan_in_fan_out: per adapted weight, for turning ab-dicts back into LoRA modules.
    rht: an ``RHTConfig`` to apply to every candidate before it is scored, or None.
    """

    def __init__(
        self,
        experts: Mapping[str, NumpyDict] | None = None,
        make_evaluator: Callable[[str], Any] | None = None,
        *,
        fan_in_fan_out: Mapping[str, bool] | None = None,
        rht: Any = None,
        device: str | None = None,
        num_threads: int | None = None,
    ) -> None:
        """Without ``experts`` the actor starts empty and gets them from :meth:`reset`: Ray
        starts population actors that way, so a restarted actor needs no constructor
        arguments from the object store (the pool re-sends ``reset`` after a restart)."""
        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.device = device or _actor_device()
        self.evaluator: Any = None
        self._evaluator_spec: Any = None
        self.timings = {"materialize_s": 0.0, "evaluate_s": 0.0, "transfer_s": 0.0}
        self.experts, self.store, self.fan, self.rht = {}, {}, {}, None
        self.lazy: dict[str, Any] = {}  # id -> Recipe of an individual rebuilt when read
        if experts is not None:
            self.reset(experts, make_evaluator, fan_in_fan_out=fan_in_fan_out, rht=rht)

    def reset(
        self,
        experts: Mapping[str, NumpyDict],
        make_evaluator: Callable[[str], Any],
        *,
        fan_in_fan_out: Mapping[str, bool] | None = None,
        rht: Any = None,
    ) -> dict[str, Any]:
        """Start over with new experts (another run on the same actors); the evaluator is
        rebuilt only when its spec changed (loading the base model is the slow part)."""
        self.experts = {k: numpy_to_td(v, self.device) for k, v in experts.items()}
        self.store: dict[str, TensorDict] = dict(self.experts)
        self.lazy = {}
        self.fan = dict(fan_in_fan_out or {})
        self.rht = rht
        if self.evaluator is None or make_evaluator != self._evaluator_spec:
            self.evaluator = make_evaluator(self.device)
            self._evaluator_spec = make_evaluator
        return self.info()

    # ---------------------------------------------------------------- introspection
    def info(self) -> dict[str, Any]:
        """Where this actor runs: node, device, GPU ids, pid (a new pid means Ray restarted it)."""
        out: dict[str, Any] = {"pid": os.getpid(), "device": str(self.device),
                               "n_keys": len(self.store) + len(self.lazy)}
        try:
            import ray

            if ray.is_initialized():
                ctx = ray.get_runtime_context()
                out["node_id"] = ctx.get_node_id()
                out["gpu_ids"] = [str(g) for g in ray.get_gpu_ids()]
        except Exception:  # outside an actor, the runtime context has no actor
            pass
        return out

    def keys(self) -> list[str]:
        return sorted(set(self.store) | set(self.lazy))

    def take_timings(self) -> dict[str, float]:
        out, self.timings = self.timings, {k: 0.0 for k in self.timings}
        return out

    # ---------------------------------------------------------------- weights
    def put_weights(self, *weight_dicts: Mapping[str, NumpyDict]) -> int:
        t0 = time.perf_counter()
        n = 0
        for wd in weight_dicts:
            for key, d in wd.items():
                self.store[key] = numpy_to_td(d, self.device)
                self.lazy.pop(key, None)
                n += 1
        self.timings["transfer_s"] += time.perf_counter() - t0
        return n

    def get_weights(self, ids: Iterable[str]) -> dict[str, NumpyDict]:
        t0, m0 = time.perf_counter(), self.timings["materialize_s"]
        out = {k: td_to_numpy(self._read(k)) for k in ids}
        # rebuilding individuals held as recipes is materialising (counted by _make), not transfer
        self.timings["transfer_s"] += time.perf_counter() - t0 - (self.timings["materialize_s"] - m0)
        return out

    def drop(self, ids: Iterable[str]) -> int:
        """Forget ``ids`` (experts stay). An individual held as a recipe that stays but reads one
        of them is given its weights first; each dropped one is freed once nothing left needs it."""
        gone = [k for k in dict.fromkeys(ids) if k not in self.experts and (k in self.store or k in self.lazy)]
        out = set(gone)
        needs = {k: self._needs(k) for k in self.lazy if k not in out}
        pin = [k for k, n in needs.items() if n & out]
        for k in pin:
            self.store[k] = self._read(k)
            del self.lazy[k]
            needs.pop(k)
            still = set().union(*needs.values()) if needs else set()
            for g in [g for g in gone if g not in still and (g in self.store or g in self.lazy)]:
                self.store.pop(g, None)
                self.lazy.pop(g, None)
        for g in gone:
            self.store.pop(g, None)
            self.lazy.pop(g, None)
        return len(gone)

    # ---------------------------------------------------------------- work
    def materialize_and_evaluate(
        self, recipes: Sequence[Mapping[str, Any]], *weight_dicts: Mapping[str, NumpyDict]
    ) -> list[EvalRow]:
        """Put the missing inputs, make every recipe's individual, score each on validation.

        ``recipes`` are ``Recipe.to_dict()`` dicts; ``weight_dicts`` carry inputs held by other
        actors (Ray resolves the object references before the call).
        """
        from evomerge.search import Recipe

        self.put_weights(*weight_dicts)
        todo = [Recipe.from_dict(dict(rd)) for rd in recipes]
        for recipe in todo:
            missing = [k for k in recipe.input_keys() if k not in self.store and k not in self.lazy]
            if missing:
                raise KeyError(f"actor lacks {missing} for recipe {recipe.id} ({recipe.op})")
            if self._rebuildable(recipe):
                for k in recipe.output_keys():  # a move's velocity too: made only if read
                    self.store.pop(k, None)
                    self.lazy[k] = recipe
            else:
                for k in recipe.output_keys():
                    self.lazy.pop(k, None)
                cache: dict[str, TensorDict] = {}
                self.store.update(self._make(recipe, {k: self._read(k, cache) for k in recipe.input_keys()}))
        return self.evaluate_keys([r.id for r in todo], "validation")

    def evaluate_keys(self, ids: Sequence[str], split: str = "validation", raw: bool = False) -> list[EvalRow]:
        """Score stored individuals (RHT'd first when configured per candidate, unless ``raw``),
        as many at a time as the evaluator scores together, so that individuals held as recipes
        exist only while they are scored."""
        ids, rows = list(ids), []
        size = self._group_size(len(ids))
        for s in range(0, len(ids), size):
            part = ids[s : s + size]
            candidates = [self._as_candidate(self._read(k)) if raw else self.candidate(self._read(k), k) for k in part]
            rows += self._score(part, candidates, split)
        return rows

    def evaluate_weights(
        self, weights: Mapping[str, NumpyDict], split: str = "validation", rht: Any = None
    ) -> list[EvalRow]:
        """Score weights sent by the driver (the final result), optionally RHT'd with ``rht``."""
        ids = list(weights)
        cands = []
        for k in ids:
            td = numpy_to_td(weights[k], self.device)
            if rht is not None:
                td = self._apply_rht(td, k, rht)
            cands.append(self._as_candidate(td))
        return self._score(ids, cands, split)

    def ensemble(self, ids: Sequence[str], split: str) -> dict[str, Any] | None:
        """Majority vote of the individuals' answers, if the evaluator supports it."""
        fn = getattr(self.evaluator, "evaluate_ensemble", None)
        if fn is None:
            return None
        res = fn([self.candidate(self._read(k), k) for k in ids], split=split)
        extra = dict(getattr(res, "extra", {}) or {})
        by_k = {int(k): {"per_task": dict(v["per_task"]), "fitness": float(v["fitness"])}
                for k, v in (extra.get("by_k") or {}).items()}
        return {"per_task": dict(res.per_task), "fitness": float(res.fitness),
                "scored_by": extra.get("scored_by"), "by_k": by_k}

    # ---------------------------------------------------------------- helpers
    def _rebuildable(self, recipe: Any) -> bool:
        """Held as a recipe: one output made by an elementwise operator (linear combinations,
        BLX, mutations: about one pass over the inputs; not an "ab"-space sum, which factorises
        each layer), rebuilt in at most ``MAX_REBUILD``
        materialisations; a coefficient move (one weighted sum of its basis per output) too.
        Registry merges (TIES, DARE) and moves on weights (GENOME+) keep weights."""
        from evomerge.search.recipe import Op

        cheap = (recipe.op in (Op.EXPERT, Op.PAD, Op.INIT_SUM, Op.MUTATE, Op.MUTATE_COEFF)
                 and not recipe.is_low_rank_sum) or (
            recipe.op in (Op.INIT_PAIR, Op.CROSSOVER) and recipe.params.get("method", "linear") in ("linear", "blx"))
        return ((recipe.is_coefficient_move or (cheap and recipe.output_keys() == (recipe.id,)))
                and 1 + sum(self._cost(k) for k in recipe.input_keys()) <= MAX_REBUILD)

    def _cost(self, key: str) -> int:
        """Materialisations to rebuild ``key`` (0 for weights held)."""
        if key in self.store:
            return 0
        return 1 + sum(self._cost(k) for k in self.lazy[key].input_keys())

    def _needs(self, key: str) -> set[str]:
        """The held keys that rebuilding ``key`` reads (through other recipes)."""
        out: set[str] = set()
        for k in self.lazy[key].input_keys():
            out.add(k)
            if k in self.lazy:
                out |= self._needs(k)
        return out

    def _make(self, recipe: Any, inputs: Mapping[str, TensorDict], keys: Sequence[str] | None = None) -> dict[str, TensorDict]:
        from evomerge.search import materialize

        t0 = time.perf_counter()
        out = materialize(recipe, inputs, keys)
        self.timings["materialize_s"] += time.perf_counter() - t0
        return out

    def _read(self, key: str, cache: dict[str, TensorDict] | None = None) -> TensorDict:
        """The weights of ``key``: stored, or rebuilt from its recipe (each individual once per
        ``cache``: a call's own when none is given)."""
        if key in self.store:
            return self.store[key]
        cache = {} if cache is None else cache
        if key not in cache:
            recipe = self.lazy[key]
            cache[key] = self._make(recipe, {k: self._read(k, cache) for k in recipe.input_keys()}, (key,))[key]
        return cache[key]

    def _group_size(self, n: int) -> int:
        fn = getattr(self.evaluator, "group_size", None)
        return max(1, int(fn(n))) if fn is not None else max(1, n)

    def candidate(self, td: TensorDict, key: str) -> Any:
        if self.rht is not None:
            td = self._apply_rht(td, key, self.rht)
        return self._as_candidate(td)

    def _apply_rht(self, td: TensorDict, key: str, cfg: Any) -> TensorDict:
        from evomerge.merging.rht import apply_rht
        from evomerge.seeding import rht_seed

        # one config, one noise: the same draw as merge and scale (not a function of the individual)
        return apply_rht(td, cfg, rht_seed(cfg.seed), fan_in_fan_out=self.fan)

    def _as_candidate(self, td: TensorDict) -> Any:
        if any(k.endswith("::A") for k in td):
            return ab_to_lora(td, self.fan)
        return td

    def _score(self, ids: list[str], candidates: list[Any], split: str) -> list[EvalRow]:
        release_free_heap()  # what was freed since (rebuilds, transfers) not resident under the peak
        t0 = time.perf_counter()
        results = self.evaluator.evaluate_many(candidates, split=split)
        self.timings["evaluate_s"] += time.perf_counter() - t0
        return [
            EvalRow(id=k, per_task={t: float(v) for t, v in r.per_task.items()}, fitness=float(r.fitness),
                    extra=dict(getattr(r, "extra", {}) or {}))
            for k, r in zip(ids, results)
        ]


def _actor_device() -> str:
    """``cuda`` when Ray gave this actor a GPU that torch can see, else ``cpu``."""
    try:
        import ray

        if ray.is_initialized() and ray.get_gpu_ids() and torch.cuda.is_available():
            return "cuda"
    except Exception:
        pass
    return "cpu"
