"""evomerge at realistic model shapes: GENOME, Model Swarms, a registry merge and a scale cell
on Ray actors over a random-initialised Llama with N random rank-8 LoRA experts.

    python benchmarks/model_scale.py --size 50m                 # CPU, a few minutes
    python benchmarks/model_scale.py --size 1b --device cuda --gpus-per-actor 1
    python benchmarks/model_scale.py --size tiny --json out.json

What it builds (in a temporary folder, as a user's files): a base model from a transformers
``LlamaConfig`` at a named size (``SIZES``: real widths, heads, KV heads, layers and vocabulary
sizes), saved with a character-level tokenizer; ``--experts`` peft adapters of rank 8 on every
linear layer of every block, A drawn like peft's initialisation and B scaled so that each
``scale * B @ A`` has ``--rel-norm`` times the Frobenius norm of the weight it adapts; and a
synthetic task set (the zoo's generators, ``validation`` and ``test`` files per task).

Phases, each on Ray actors:

* ``genome`` / ``swarm``: ``run_evolve`` with a population of 10 for one generation (GENOME:
  generations 1, so the initial population round and one breeding round; Model Swarms:
  max_iter 1). Per round: wall time, evaluations/s and where the round's time went:
  ``merging`` (the actor materialising recipes), ``swapping`` (candidates turned into the
  evaluator's deltas and applied to the live base), ``forward`` (model passes), ``scoring``
  (metrics on the logits), ``transfer`` (weights put/got by actors and fetched by the driver),
  ``other`` (the rest: driver bookkeeping, Parquet, checkpoints, idle actors). The shares sum to
  1 by construction; that the measured ones fit inside the round is what the test checks.
  ``outside_eval`` is 1 - time inside ``Evaluator.evaluate_many`` / round wall (the issue's
  target: under 10%). Object-store traffic per round: the new individuals the driver fetched
  (its snapshot) plus the parents an actor got from another (``PopulationPool.assign`` wrapped).
* ``merge``: a registry merge of the N experts (``CellWorker.merged``, streaming per tensor)
  for task arithmetic, TIES and DARE-TIES, and on the same stacked tensors peft's
  ``merge_utils`` and a memory copy.
* ``cell``: one scale cell (TIES of all N experts + validation and test) through
  ``RayCellRunner``.
* ``naive``: the save-reload-evaluate loop (``eval_throughput.naive_scores``: peft adapter
  saved, the base read from disk again (``reload``, a user's loop) or deep-copied from one
  loaded copy (``copy``, the loop's cheapest form), ``PeftModel.from_pretrained``, every batch)
  against ``Evaluator.evaluate_many`` on the same ``--naive`` candidates (the experts; 10 is
  the papers' population), in the driver. ``evaluate_many`` is warmed up on the same
  candidates (so the timed calls run the same stacked path, kernels and allocations) and timed
  as the mean of ``--naive-repeats`` calls, as an evolve loop calls it round after round.

Memory: an actor's peak host memory is its peak RSS (``ru_maxrss``) minus the peak RSS of an
idle actor with the same imports; the bound is the issue's ``base + N experts + population``
bytes (the base in its stored dtype, so an evaluator that widens bf16 to fp32 shows; experts and
individuals as the fp32 A/B dicts the actors hold). Activations (logits over the vocabulary
for a batch) are not in the bound. RSS counts the object-store pages an actor touched (the
experts it was sent, the individuals it returned), which Ray keeps once per node for the driver
and every actor; a thread in each actor samples its resident memory every 5 ms, so ``own`` (heap
+ mapped files, above an idle actor's) and ``shm`` (object-store pages) are reported apart.
On CUDA the device peak is ``torch.cuda.max_memory_allocated`` in the actor, and the
actors take ``--gpus-per-actor`` GPUs each (fractions share one; default 1/actors).

``model_scale_build.py`` writes the files; ``model_scale_probes.py`` is what runs inside the
actors (through Ray's ``__ray_call__``, so the library's actors are measured unchanged);
``model_scale_report.py`` prints the tables; ``gpu_check.sh`` runs the GPU checks of issue 18.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import model_scale_probes as probes  # noqa: E402
from model_scale_naive import naive_phase  # noqa: E402
from model_scale_report import MERGE_METHODS, report  # noqa: E402
from model_scale_build import SIZES, TASKS, load_or_build_workspace  # noqa: E402

PHASES = ("genome", "swarm", "scale", "naive")

# ---------------------------------------------------------------- phases (driver side)
def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0


def _shares(wall: float, merging: float, swapping: float, forward: float, scoring: float,
            transfer: float) -> dict[str, float]:
    parts = {"merging": merging, "swapping": swapping, "forward": forward, "scoring": scoring, "transfer": transfer}
    out = {k: v / wall for k, v in parts.items()}
    out["other"] = 1.0 - sum(out.values())
    return out


def _count_traffic(pool, log: list[dict[str, int]]) -> None:
    """Wrap ``pool.assign`` to add up, per round, the bytes of parents that an actor gets from
    another (as ``PopulationPool._dispatch`` routes them: once per receiving actor and key)."""
    inner = pool.assign

    def assign(recipes):
        groups = inner(recipes)
        need = {(idx, k) for idx, group in enumerate(groups) for r in group for k in r.input_keys()
                if k not in pool.expert_keys and pool.location.get(k, idx) != idx}
        log.append({"cross_actor_bytes": sum(_nbytes(pool.snapshot[k]) for _, k in need)})
        return groups

    pool.assign = assign


def _nbytes(d) -> int:
    return sum(a.nbytes for a in d.values())


def evolve_phase(algo: str, args, ws: dict, root: Path, idle: dict[str, int]) -> dict[str, Any]:
    """One run_evolve (GENOME: 1 generation; swarm: 1 iteration), measured per round."""
    import ray

    from evomerge.config import config_from_dict
    from evomerge.distributed.runtime import Runtime
    from evomerge.pipelines.evolve.run import run_evolve

    spec_cls = probes.spec_class()

    class BenchRuntime(Runtime):
        def start(self, inputs, rht=None):
            spec = spec_cls(**{f.name: getattr(inputs.evaluator, f.name) for f in dataclasses.fields(inputs.evaluator)})
            pool = super().start(dataclasses.replace(inputs, evaluator=spec), rht)
            _count_traffic(pool, assigned)
            ray.get([a.__ray_call__.remote(probes.start_sampler) for a in pool.actors])
            return pool

        def score_experts(self):  # the experts' own scores are not part of a round
            out = super().score_experts()
            ray.get([a.__ray_call__.remote(probes.take_calls) for a in self.pool.actors])
            return out

    cfg = config_from_dict(_cfg_dict(args, ws))
    run_dir = root / f"run_{algo}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a reused --workdir: a fresh run, not a resume
    rounds: list[dict[str, Any]] = []
    assigned: list[dict[str, int]] = []
    state = {"fetch_s": 0.0, "snap": set()}
    t_run = time.perf_counter()
    with BenchRuntime(cfg) as rt:
        def on_generation(info) -> None:
            pool = rt.pool
            st = pool.stats()  # actor timings of this round (take_timings resets them)
            calls = ray.get([a.__ray_call__.remote(probes.take_calls) for a in pool.actors])
            mem = ray.get([a.__ray_call__.remote(probes.memory) for a in pool.actors])
            acts = st["actors"]
            fetch = st["fetch_s"] - state["fetch_s"]
            wall = info.seconds
            ev_inner = [sum(c["total_s"] for c in cs) for cs in calls]
            swap = _mean(sum(c["resolve_s"] + c["apply_s"] for c in cs) for cs in calls)
            fwd = _mean(sum(c["forward_s"] for c in cs) for cs in calls)
            metrics = _mean(sum(c["metrics_s"] for c in cs) for cs in calls)
            fetched = sum(_nbytes(v) for k, v in pool.snapshot.items() if k not in state["snap"])
            cross = sum(a["cross_actor_bytes"] for a in assigned)
            assigned.clear()
            traffic = {"driver_fetch_bytes": fetched, "cross_actor_bytes": cross, "bytes": fetched + cross}
            rounds.append({
                "step": info.step, "generation": info.generation, "wall_s": wall, "evaluations": info.n_evaluated,
                "evaluated_by_actors": sum(c["n"] for cs in calls for c in cs),
                "evaluate_s": _mean(a["evaluate_s"] for a in acts), "evaluator_calls_s": _mean(ev_inner),
                "materialize_s": _mean(a["materialize_s"] for a in acts),
                "transfer_s": _mean(a["transfer_s"] for a in acts) + fetch,
                "swap_s": swap, "forward_s": fwd,
                "metrics_s": metrics,
                "shares": _shares(wall, _mean(a["materialize_s"] for a in acts), swap, fwd, metrics,
                                  _mean(a["transfer_s"] for a in acts) + fetch),
                "outside_eval": 1.0 - _mean(a["evaluate_s"] for a in acts) / wall,
                "traffic": traffic, "memory": mem,
            })
            state["fetch_s"] = st["fetch_s"]
            state["snap"] = set(pool.snapshot)

        res = run_evolve(cfg, algo, run_dir, progress=False, runtime=rt, write_adapter=False,
                         on_generation=on_generation)
    return _phase_summary(algo, rounds, args, ws, idle,
                          run_wall_s=time.perf_counter() - t_run, best_fitness=res.best_fitness)


def _cfg_dict(args, ws: dict) -> dict[str, Any]:
    space = {"space": args.space}
    return {
        "seed": args.seed,
        "experts": {"base": str(ws["base"]), "experts": [{"path": str(p), "name": p.name} for p in ws["experts"]]},
        "evaluation": {"task_files": {t: str(d) for t, d in ws["tasks"].items()}, "max_samples": args.samples,
                       "batch_size": args.batch_size},
        "genome": {"population": args.population, "generations": 1, "cross_rate": 0.5, "ind_mut_rate": 0.5,
                   "ensemble_k": 2, **space},
        "swarm": {"max_iter": 1, "max_particles": max(args.population, args.experts), **space},
        "ray": {"num_actors": args.actors, "cpus_per_actor": args.threads, "gpus_per_actor": args.gpus_per_actor},
    }


def memory_bound(args, ws: dict) -> int:
    """The issue's bound: base + N experts + population, all as LoRA A/B dicts in fp32 (with
    ``space: delta`` individuals are dense task vectors, far above this by design)."""
    return ws["base_bytes_stored"] + (args.experts + args.population) * ws["expert_ab_bytes"]


def _own(mem: dict[str, Any], idle: dict[str, int]) -> dict[str, int]:
    """The sampled peaks: the actor's own bytes (heap + mapped files) above an idle actor's, and
    the object-store pages it touched (shared with the driver and the other actors)."""
    at = dict(mem.get("at_own_peak") or {})
    if at:  # the peak broken down: heap and mapped files above the idle actor's, individuals held
        at["anon_extra"], at["file_extra"] = at.pop("anon") - idle.get("anon", 0), at.pop("file") - idle.get("file", 0)
    return {"own_peak_extra": mem.get("own_peak", 0) - idle["own"], "shmem_peak": mem.get("shmem_peak", 0),
            "at_own_peak": at}


def _phase_summary(name: str, rounds: list[dict], args, ws: dict, idle: dict[str, int], **extra) -> dict[str, Any]:
    idle_rss = idle["rss_peak"]
    wall = sum(r["wall_s"] for r in rounds)
    mem = rounds[-1]["memory"] if rounds else []
    peak = max((m["rss_peak"] for m in mem), default=0)
    own = max((_own(m, idle) for m in mem), key=lambda o: o["own_peak_extra"], default={})
    tot = {k: sum(r[k] for r in rounds)
           for k in ("materialize_s", "swap_s", "forward_s", "metrics_s", "transfer_s", "evaluate_s")}
    return {
        "phase": name, "rounds": rounds, "wall_s": wall, "evaluations": sum(r["evaluations"] for r in rounds),
        "evals_per_s": sum(r["evaluations"] for r in rounds) / wall if wall else 0.0,
        "shares": _shares(wall, tot["materialize_s"], tot["swap_s"], tot["forward_s"], tot["metrics_s"],
                          tot["transfer_s"]),
        "outside_eval": 1.0 - tot["evaluate_s"] / wall if wall else 0.0,
        "host_peak": peak, "host_peak_extra": peak - idle_rss, **own, "bound": memory_bound(args, ws),
        "device_peak": max((m.get("cuda_peak", 0) for m in mem), default=0),
        "eval_dtype": mem[0].get("eval_dtype") if mem else None,
        "traffic_per_round": _mean(r["traffic"]["bytes"] for r in rounds), **extra,
    }


def scale_phases(args, ws: dict, idle: dict[str, int]) -> list[dict[str, Any]]:
    """The registry merge of all N experts and one scale cell, on one CellWorker actor."""
    import ray

    from evomerge.config.sections import EvaluationConfig, RayConfig, RHTConfig
    from evomerge.pipelines.scale.execute import RayCellRunner
    from evomerge.pipelines.scale.plan import Cell
    from evomerge.pipelines.scale.work import ScaleContext

    n = args.experts
    ctx = ScaleContext(
        expert_paths=tuple(str(p) for p in ws["experts"]), names=tuple(p.name for p in ws["experts"]),
        expert_tasks=(None,) * n, base_dir=str(ws["base"]), zoo_root=None,
        evaluation=EvaluationConfig(task_files=dict(ws["tasks"]), max_samples=args.samples, batch_size=args.batch_size),
        rht=RHTConfig(), threads=args.threads)
    ray_cfg = RayConfig(num_actors=1, cpus_per_actor=args.threads, gpus_per_actor=args.gpus_per_actor)
    with RayCellRunner(ctx, ray_cfg) as runner:
        actor = runner.actors[0]
        idle_rss = idle["rss_peak"]
        ray.get(actor.__ray_call__.remote(probes.start_sampler))
        before = ray.get(actor.__ray_call__.remote(probes.memory))
        t0 = time.perf_counter()
        m = ray.get(actor.__ray_call__.remote(probes.merge_bench, MERGE_METHODS, args.seed))
        wall = time.perf_counter() - t0
        after = ray.get(actor.__ray_call__.remote(probes.memory))
        merge = {"phase": "merge", "wall_s": wall, "evaluations": 0, "detail": m,
                 "host_peak": after["rss_peak"], "host_peak_extra": after["rss_peak"] - idle_rss, **_own(after, idle),
                 "merge_peak_growth": after["rss_peak"] - before["rss_peak"], "bound": memory_bound(args, ws),
                 "device_peak": after.get("cuda_peak", 0), "eval_dtype": after.get("eval_dtype"),
                 "traffic_per_round": 0}
        ray.get(actor.__ray_call__.remote(probes.time_merges))
        ray.get(actor.__ray_call__.remote(probes.reset_peaks))  # the cell's peaks, not the merge benchmark's
        cell = Cell("merge", n, "ties", False, args.seed, (args.seed,), tuple(range(n)))
        t0 = time.perf_counter()
        [(_, out)] = list(runner.run([cell]))
        wall = time.perf_counter() - t0
        ct = ray.get(actor.__ray_call__.remote(probes.cell_timings))
        mem = ray.get(actor.__ray_call__.remote(probes.memory))
    calls = ct["calls"]
    swap = sum(c["resolve_s"] + c["apply_s"] for c in calls)
    fwd = sum(c["forward_s"] for c in calls)
    import pickle

    cell_row = {
        "phase": "cell", "wall_s": wall, "evaluations": out.evaluations, "evals_per_s": out.evaluations / wall,
        "actor_s": out.seconds, "evaluated_by_actor": sum(c["n"] for c in calls),
        "shares": _shares(wall, ct["merge_s"], swap, fwd, sum(c["metrics_s"] for c in calls),
                          max(0.0, wall - out.seconds)),
        "outside_eval": 1.0 - sum(c["total_s"] for c in calls) / wall,
        "host_peak": mem["rss_hwm"], "host_peak_extra": mem["rss_hwm"] - idle_rss, **_own(mem, idle),
        "bound": memory_bound(args, ws),
        "device_peak": mem.get("cuda_peak", 0), "eval_dtype": mem.get("eval_dtype"),
        "traffic_per_round": len(pickle.dumps(out)),
    }
    return [merge, cell_row]


def run(args) -> dict[str, Any]:
    """The phases of ``args.phases``; Ray is started only for the actor phases (``naive`` alone
    runs without it, e.g. on a GPU machine that lacks Ray)."""
    cuda = args.device.startswith("cuda")
    if args.gpus_per_actor is None:
        args.gpus_per_actor = 1.0 / args.actors if cuda else 0.0
    on_actors = [ph for ph in args.phases if ph != "naive"]
    if on_actors:
        import ray

        ray.cloudpickle.register_pickle_by_value(probes)  # actors cannot import benchmarks/
        ray.init(address="local", num_cpus=max(2, args.actors * args.threads + 1), num_gpus=1 if cuda else 0,
                 include_dashboard=False, log_to_driver=False)
    idle_mem = {"rss_peak": 0, "own": 0}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(args.workdir or tmp)
            t0 = time.perf_counter()
            ws, reused = load_or_build_workspace(root, args)
            build_s = time.perf_counter() - t0
            if on_actors:
                from evomerge.distributed.actors import PopulationActor

                idle = ray.remote(PopulationActor).options(num_cpus=0).remote()
                idle_mem = ray.get(idle.__ray_call__.remote(probes.idle_rss))
                ray.kill(idle)
            res = _result(args, ws, build_s, reused, idle_mem)
            for algo in ("genome", "swarm"):
                if algo in args.phases:
                    res["phases"].append(evolve_phase(algo, args, ws, root, idle_mem))
                    _write(args, res)  # a time limit that stops a later phase keeps this one
            if "scale" in args.phases:
                res["phases"] += scale_phases(args, ws, idle_mem)
                _write(args, res)
            res["naive"] = naive_phase(args, ws) if args.naive and "naive" in args.phases else None
    finally:
        if on_actors:
            ray.shutdown()
    return res


def _result(args, ws: dict, build_s: float, reused: bool, idle_mem: dict[str, int]) -> dict[str, Any]:
    info = {k: (str(v) if isinstance(v, Path) else v) for k, v in ws.items() if k not in ("experts", "tasks")}
    return {"size": args.size, "experts": args.experts, "population": args.population, "device": args.device,
            "space": args.space,
            "individual_bytes": ws["expert_ab_bytes"] if args.space == "ab" else 4 * ws["linear_params"],
            "dtype": args.dtype, "samples": args.samples, "tasks": args.tasks, "build_s": build_s,
            "reused_workdir": reused,
            "idle_actor_rss": idle_mem["rss_peak"], "idle_actor_own": idle_mem["own"],
            "idle_actor_anon": idle_mem.get("anon", 0), "idle_actor_file": idle_mem.get("file", 0), "workspace": info,
            "phases": [], "naive": None}


def _write(args, res: dict[str, Any]) -> None:
    """``--json``, atomically (also after each phase)."""
    if args.json:
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(res, indent=1, default=str))
        tmp.replace(args.json)


def main(argv=None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=list(SIZES), default="50m")
    p.add_argument("--experts", type=int, default=10)
    p.add_argument("--population", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="base dtype (default: bfloat16 from 1b up, else float32)")
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--gpus-per-actor", type=float, default=None, help="default: 1/actors on cuda")
    p.add_argument("--threads", type=int, default=1, help="CPUs (torch threads) per actor")
    p.add_argument("--tasks", type=int, default=2, choices=range(1, len(TASKS) + 1))
    p.add_argument("--samples", type=int, default=16, help="validation and test examples per task")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--rel-norm", type=float, default=0.005, help="||scale B@A||_F / ||W||_F of each expert module")
    p.add_argument("--space", choices=["ab", "delta"], default=None,
                   help="search space of GENOME and Model Swarms (default: the config's default)")
    p.add_argument("--naive", type=int, default=2, help="candidates of the naive loop, the first N experts (0: skip)")
    p.add_argument("--naive-repeats", type=int, default=3, help="timed evaluate_many calls (after one warm-up)")
    p.add_argument("--naive-loop", default="reload,copy",
                   help="naive loops to time, the first is the reference: reload (base read from disk per candidate), copy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--phases", default=",".join(PHASES),
                   help=f"comma-separated subset of {','.join(PHASES)} (to split a long run into several)")
    p.add_argument("--workdir", default=None, help="write the model files and runs here and keep them; files already complete"
                   " there for the same size/experts/dtype/tasks/samples/rank/rel-norm/seed are reused (default: a temporary folder)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    args.phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    if not args.phases or set(args.phases) - set(PHASES):
        p.error(f"--phases: choose from {','.join(PHASES)}. Got {args.phases!r} instead.")
    if args.experts < 2:
        p.error("--experts: evolutionary merging needs at least 2")
    if args.naive > args.experts:
        p.error(f"--naive: at most --experts ({args.experts}) candidates (the experts themselves). Got {args.naive}.")
    if args.naive_repeats < 1:
        p.error(f"--naive-repeats: at least 1. Got {args.naive_repeats}.")
    args.naive_loop = [x.strip() for x in args.naive_loop.split(",") if x.strip()]
    if not args.naive_loop or set(args.naive_loop) - {"reload", "copy"}:
        p.error(f"--naive-loop: a comma list of reload, copy. Got {args.naive_loop!r}.")
    if args.dtype is None:
        args.dtype = "bfloat16" if args.size in ("1b", "1.1b", "2b") else "float32"
    if not isinstance(getattr(torch, args.dtype, None), torch.dtype):
        p.error(f"--dtype: {args.dtype!r} is not a torch dtype")
    from evomerge.config import config_from_dict

    if args.space is None:
        args.space = config_from_dict({}).genome.space
    res = run(args)
    report(res)
    _write(args, res)
    return res


if __name__ == "__main__":
    main()
