"""The population actor: holds experts and individuals on its device, materialises recipes and
evaluates them.

A plain class (wrapped with ``ray.remote`` where it is started), so it runs and is tested
without Ray. Weights cross process boundaries only as ``{key: {tensor name: np.ndarray}}``
dicts, which Ray's object store shares without copying.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from evomerge.experts.types import TensorDict, ab_to_lora

NumpyDict = dict[str, np.ndarray]


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
        self.fan = dict(fan_in_fan_out or {})
        self.rht = rht
        if self.evaluator is None or make_evaluator != self._evaluator_spec:
            self.evaluator = make_evaluator(self.device)
            self._evaluator_spec = make_evaluator
        return self.info()

    # ---------------------------------------------------------------- introspection
    def info(self) -> dict[str, Any]:
        """Where this actor runs: node, device, GPU ids, pid (a new pid means Ray restarted it)."""
        out: dict[str, Any] = {"pid": os.getpid(), "device": str(self.device), "n_keys": len(self.store)}
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
        return sorted(self.store)

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
                n += 1
        self.timings["transfer_s"] += time.perf_counter() - t0
        return n

    def get_weights(self, ids: Iterable[str]) -> dict[str, NumpyDict]:
        t0 = time.perf_counter()
        out = {k: td_to_numpy(self.store[k]) for k in ids}
        self.timings["transfer_s"] += time.perf_counter() - t0
        return out

    def drop(self, ids: Iterable[str]) -> int:
        n = 0
        for k in ids:
            if k not in self.experts and self.store.pop(k, None) is not None:
                n += 1
        return n

    # ---------------------------------------------------------------- work
    def materialize_and_evaluate(
        self, recipes: Sequence[Mapping[str, Any]], *weight_dicts: Mapping[str, NumpyDict]
    ) -> list[EvalRow]:
        """Put the missing inputs, make every recipe's individual, score each on validation.

        ``recipes`` are ``Recipe.to_dict()`` dicts; ``weight_dicts`` carry inputs held by other
        actors (Ray resolves the object references before the call).
        """
        from evomerge.search import Recipe, materialize

        self.put_weights(*weight_dicts)
        t0 = time.perf_counter()
        made = []
        for rd in recipes:
            recipe = Recipe.from_dict(dict(rd))
            missing = [k for k in recipe.input_keys() if k not in self.store]
            if missing:
                raise KeyError(f"actor lacks {missing} for recipe {recipe.id} ({recipe.op})")
            self.store.update(materialize(recipe, self.store))
            made.append(recipe.id)
        self.timings["materialize_s"] += time.perf_counter() - t0
        return self.evaluate_keys(made, "validation")

    def evaluate_keys(self, ids: Sequence[str], split: str = "validation", raw: bool = False) -> list[EvalRow]:
        """Score stored individuals (RHT'd first when configured per candidate, unless ``raw``)."""
        candidates = [self._as_candidate(self.store[k]) if raw else self.candidate(self.store[k], k) for k in ids]
        return self._score(list(ids), candidates, split)

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
        res = fn([self.candidate(self.store[k], k) for k in ids], split=split)
        extra = dict(getattr(res, "extra", {}) or {})
        by_k = {int(k): {"per_task": dict(v["per_task"]), "fitness": float(v["fitness"])}
                for k, v in (extra.get("by_k") or {}).items()}
        return {"per_task": dict(res.per_task), "fitness": float(res.fitness),
                "scored_by": extra.get("scored_by"), "by_k": by_k}

    # ---------------------------------------------------------------- helpers
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
