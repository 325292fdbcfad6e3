"""Evaluations per second of ``run_evolve`` with 1, 2, 4 population actors, and the share of
the generation loop's wall time spent outside evaluation.

    python benchmarks/evolve_scaling.py --actors 1 2 4 --population 8 --generations 4

Per actor count: a fresh set of actors (start-up is not timed: it loads the base model once
per actor), one GENOME run on the small zoo, then

* ``evals/s``: evaluations / loop wall time (sum of the rounds' times, checkpoints included);
* ``efficiency``: ``(evals/s with n actors) / (n * evals/s with 1 actor)``;
* ``outside-eval share``: ``1 - mean over actors(time inside Evaluator.evaluate_many) / loop
  wall time``: materialisation, transfers, driver bookkeeping, Parquet and checkpoints, and
  the idle time of actors waiting for a round's slowest actor.

One untimed 1-actor run goes first (``--no-warmup`` skips it): the first run in a fresh Ray
session pays one-time costs (worker processes, imports) that are not part of a generation.

Ray is started with ``--cpus`` logical CPUs (default 4) so that 4 one-CPU actors can be
placed; on a 2-core machine they share the cores, so expect no gain past 2.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def one(n_actors: int, args, tmp: Path) -> dict:
    from evomerge.config import config_from_dict
    from evomerge.distributed.runtime import Runtime
    from evomerge.pipelines.evolve.run import run_evolve

    cfg = config_from_dict({
        "seed": args.seed,
        "evaluation": {"max_samples": args.max_samples},
        "genome": {"population": args.population, "generations": args.generations, "cross_rate": 1.0,
                   "ind_mut_rate": 1.0, "gene_mut_rate": 0.1, "sigma": 0.01, "early_stop_iter": 100},
        "ray": {"num_actors": n_actors},
    })
    rounds = []
    t0 = time.perf_counter()
    with Runtime(cfg) as rt:
        out = tmp / f"run{n_actors}"
        shutil.rmtree(out, ignore_errors=True)
        res = run_evolve(cfg, "genome", out, progress=False, runtime=rt, write_adapter=False,
                         on_generation=rounds.append)
    total = time.perf_counter() - t0
    loop_s = sum(r.seconds for r in rounds)
    evals = sum(r.n_evaluated for r in rounds)
    eval_s = [a["evaluate_s"] for a in res.stats["actors"]]
    return {
        "actors": n_actors,
        "evaluations": evals,
        "loop_s": round(loop_s, 3),
        "evals_per_s": evals / loop_s,
        "eval_s_per_actor": [round(x, 3) for x in eval_s],
        "outside_eval_share": 1.0 - (sum(eval_s) / len(eval_s)) / loop_s,
        "materialize_s": round(sum(a["materialize_s"] for a in res.stats["actors"]), 3),
        "transfer_s": round(sum(a["transfer_s"] for a in res.stats["actors"]), 3),
        "driver_fetch_s": round(res.stats["fetch_s"], 3),
        "startup_and_final_s": round(total - loop_s, 1),
        "best_fitness": res.best_fitness,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--generations", type=int, default=4)
    p.add_argument("--max-samples", type=int, default=100)
    p.add_argument("--cpus", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the untimed first run")
    args = p.parse_args()

    import ray

    from evomerge.zoo import ensure_zoo

    ensure_zoo("small")
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if args.warmup:
                one(1, args, Path(tmp))
            for n in args.actors:
                rows.append(one(n, args, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        ray.shutdown()
    base = next((r["evals_per_s"] for r in rows if r["actors"] == 1), None)
    print(f"\n{'actors':>6} {'evals':>6} {'loop s':>7} {'evals/s':>8} {'efficiency':>10} {'outside-eval':>12}")
    for r in rows:
        eff = r["evals_per_s"] / (r["actors"] * base) if base else float("nan")
        r["efficiency"] = eff
        print(f"{r['actors']:>6} {r['evaluations']:>6} {r['loop_s']:>7.2f} {r['evals_per_s']:>8.2f} "
              f"{eff:>10.2f} {100 * r['outside_eval_share']:>11.1f}%")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
