"""What ``model_scale.py`` runs inside the Ray actors (sent by value: workers cannot import
``benchmarks/``): a timed Evaluator, memory readings, the merge timings and the scale-cell hooks."""

from __future__ import annotations

import dataclasses
import resource
import time
from typing import Any

import torch

EVAL_PARTS = ("resolve_s", "apply_s", "forward_s", "metrics_s", "total_s")


def _now(cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter()


def instrument(ev: Any) -> Any:
    """Make an Evaluator record where ``evaluate_many`` spends its time (per call)."""
    ev.__class__ = type("TimedEvaluator", (ev.__class__,), dict(_TIMED))
    ev.calls, ev._cur = [], None
    return ev


def _timed_many(self, candidates, split="validation", **kw):
    cuda = self.device.type == "cuda"
    self._cur = dict.fromkeys(EVAL_PARTS, 0.0)
    t0 = _now(cuda)
    out = super(type(self), self).evaluate_many(candidates, split, **kw)
    c = self._cur
    c["total_s"] = _now(cuda) - t0
    c["apply_s"] = max(0.0, c["total_s"] - c["resolve_s"] - c.pop("score_batch_s", 0.0))
    self.calls.append({**c, "n": len(candidates), "split": split})
    self._cur = None
    return out


def _timed_part(name: str, parent: str):
    def method(self, *a, **kw):
        cuda = self.device.type == "cuda"
        t0 = _now(cuda)
        out = getattr(super(type(self), self), parent)(*a, **kw)
        if self._cur is not None:
            self._cur[name] = self._cur.get(name, 0.0) + _now(cuda) - t0
        return out
    return method


def _timed_score_batch(self, *a, **kw):
    """``_score_batch`` timed; its forward time is recorded by ``_forward``, the rest is metrics."""
    if self._cur is None:  # outside evaluate_many (ensembles): not recorded
        return super(type(self), self)._score_batch(*a, **kw)
    cuda = self.device.type == "cuda"
    f0, t0 = self._cur["forward_s"], _now(cuda)
    super(type(self), self)._score_batch(*a, **kw)
    dt = _now(cuda) - t0
    self._cur["score_batch_s"] = self._cur.get("score_batch_s", 0.0) + dt
    self._cur["metrics_s"] += dt - (self._cur["forward_s"] - f0)


_TIMED = {"evaluate_many": _timed_many, "_resolve": _timed_part("resolve_s", "_resolve"),
          "_forward": _timed_part("forward_s", "_forward"), "_score_batch": _timed_score_batch}


def take_calls(actor) -> list[dict]:
    ev = actor.evaluator
    out, ev.calls = list(ev.calls), []
    return out


def _resident() -> dict[str, int]:
    """Resident bytes now, split: ``anon`` (the process's own heap), ``file`` (mapped files: the
    base model's safetensors pages, libraries), ``shmem`` (Ray's object store pages it touched)."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, val = line.partition(":")
            if key in ("RssAnon", "RssFile", "RssShmem"):
                out[key[3:].lower()] = int(val.split()[0]) * 1024
    return out


def _held(actor) -> dict[str, Any]:
    """What a PopulationActor holds now: individuals with weights (count, bytes), individuals
    held as recipes, and whether it is inside ``evaluate_many``."""
    store, experts = getattr(actor, "store", None), getattr(actor, "experts", {})
    if store is None:
        return {}
    for _ in range(3):  # the actor's thread may change the dicts meanwhile
        try:
            ind = [td for k, td in list(store.items()) if k not in experts]
            return {"individuals": len(ind), "lazy": len(getattr(actor, "lazy", {})),
                    "individual_bytes": sum(t.numel() * t.element_size() for td in ind for t in list(td.values())),
                    "in_eval": getattr(getattr(actor, "evaluator", None), "_cur", None) is not None}
        except RuntimeError:
            continue
    return {}


def _sample(actor, period: float) -> None:
    while True:
        r = _resident()
        pk = actor.mem_peak
        if r["anon"] + r["file"] > pk.get("own", 0):
            pk["own"] = r["anon"] + r["file"]
            pk["at_own"] = {"anon": r["anon"], "file": r["file"], **_held(actor)}
        pk["shmem"] = max(pk.get("shmem", 0), r["shmem"])
        time.sleep(period)


def start_sampler(actor, period: float = 0.005) -> None:
    """Sample the actor's resident memory every ``period`` s in a thread: ``ru_maxrss`` (the peak
    RSS) cannot say how much of it was object-store pages, shared with the driver and every actor."""
    import threading

    if getattr(actor, "mem_peak", None) is None:
        r = _resident()
        actor.mem_peak = {"own": r["anon"] + r["file"], "shmem": r["shmem"]}
        threading.Thread(target=_sample, args=(actor, period), daemon=True).start()


def reset_peaks(actor) -> None:
    """Start the actor's peaks over (sampled peaks and the kernel's VmHWM) so that the next
    phase on the same actor reports its own."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    r = _resident()
    actor.mem_peak = {"own": r["anon"] + r["file"], "shmem": r["shmem"]}


def memory(actor) -> dict[str, Any]:
    """Peak RSS, current RSS, CUDA peak and the evaluator's parameter dtype/bytes of this actor;
    with :func:`start_sampler` running, the sampled peaks of its own (heap + mapped files) and
    object-store bytes."""
    out: dict[str, Any] = {"rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    with open("/proc/self/statm") as fh:
        out["rss_now"] = int(fh.read().split()[1]) * resource.getpagesize()
    out.update({f"rss_{k}": v for k, v in _resident().items()})
    with open("/proc/self/status") as fh:  # the peak RSS since the last reset_peaks
        out["rss_hwm"] = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
    if getattr(actor, "mem_peak", None) is not None:
        out["own_peak"], out["shmem_peak"] = actor.mem_peak["own"], actor.mem_peak["shmem"]
        out["at_own_peak"] = dict(actor.mem_peak.get("at_own", {}))
    store = getattr(actor, "store", None)
    if store is not None:  # a PopulationActor: experts and individuals it holds now
        out["store_entries"] = len(store)
        out["lazy_entries"] = len(getattr(actor, "lazy", {}))
        out["store_bytes"] = sum(t.numel() * t.element_size() for td in store.values() for t in td.values())
    import evomerge

    out["evomerge"] = str(evomerge.__file__)
    ev = getattr(actor, "evaluator", None)
    if ev is not None:
        ps = list(ev.model.parameters())
        out["eval_dtype"] = str(ps[0].dtype).replace("torch.", "")
        out["eval_param_bytes"] = sum(p.numel() * p.element_size() for p in ps)
        out["device"] = str(ev.device)
        if ev.device.type == "cuda":
            out["cuda_peak"] = torch.cuda.max_memory_allocated(ev.device)
    return out


def idle_rss(actor) -> int:
    """Peak RSS of an actor after the imports a working one makes (the interpreter's share)."""
    import datasets  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401

    import evomerge.evaluation.evaluator  # noqa: F401
    import evomerge.search  # noqa: F401

    r = _resident()
    return {"rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "own": r["anon"] + r["file"],
            "anon": r["anon"], "file": r["file"]}


def spec_class():
    from evomerge.pipelines.inputs import EvaluatorSpec

    @dataclasses.dataclass(frozen=True)
    class TimedSpec(EvaluatorSpec):
        def __call__(self, device: str) -> Any:
            return instrument(super().__call__(device))

    return TimedSpec


def merge_bench(worker, methods, seed: int) -> dict[str, Any]:
    """On a CellWorker: ``merged`` of all experts per method, then per tensor of the same stacked
    deltas evomerge's method, peft's ``merge_utils`` and a copy (each method's defaults)."""
    from peft.utils import merge_utils as mu

    from evomerge.merging.apply import merge_one
    from evomerge.merging.registry import get_merge_method

    pool, dev = worker.pool, worker.evaluator.device
    cuda, n = dev.type == "cuda", len(worker.pool)
    out: dict[str, Any] = {"n": n, "stack_s": 0.0, "copy_s": 0.0, "input_bytes": 0}
    for m in methods:
        t0 = _now(cuda)
        merged = worker.merged(m, tuple(range(n)), seed)
        out[f"merged_{m}_s"] = _now(cuda) - t0
        out["merged_bytes"] = sum(v.numel() * v.element_size() for v in merged.values())
        del merged
        out[f"{m}_s"] = out[f"peft_{m}_s"] = 0.0
    w = torch.ones(n, device=dev)
    for key in pool.keys():
        t0 = _now(cuda)
        x = pool.stacked(key, device=dev)
        out["stack_s"] += _now(cuda) - t0
        out["input_bytes"] += x.numel() * x.element_size()
        dst = torch.empty_like(x)
        t0 = _now(cuda)
        dst.copy_(x)
        out["copy_s"] += _now(cuda) - t0
        del dst
        for m in methods:
            meth = get_merge_method(m)
            params = meth.resolve({})
            t0 = _now(cuda)
            merge_one(meth, key, x, None, params, seed, None, dev)
            out[f"{m}_s"] += _now(cuda) - t0
            torch.manual_seed(seed)
            peft_args = (list(x), w) if m == "task_arithmetic" else (list(x), w, params["density"])
            t0 = _now(cuda)
            getattr(mu, m)(*peft_args)
            out[f"peft_{m}_s"] += _now(cuda) - t0
    return out


def time_merges(worker) -> None:
    """Record the time of every ``CellWorker.merged`` call (a cell's merge) on the worker."""
    inner = worker.merged
    worker.merge_s = 0.0

    def merged(*a, **kw):
        t0 = _now(worker.evaluator.device.type == "cuda")
        res = inner(*a, **kw)
        worker.merge_s += _now(worker.evaluator.device.type == "cuda") - t0
        return res

    worker.merged = merged
    instrument(worker.evaluator)


def cell_timings(worker) -> dict[str, Any]:
    return {"merge_s": worker.merge_s, "calls": take_calls(worker)}


