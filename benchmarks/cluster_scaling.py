"""Speedup of an evolutionary run with 1, 2 and 4 simulated nodes (ray.cluster_utils.Cluster).

    python benchmarks/cluster_scaling.py [--nodes 1,2,4] [--population 16] [--generations 3] [--out DIR]

Each simulated node is a separate raylet with one CPU and one population actor, all on this
machine, so the figures measure Ray's placement, dispatch and weight traffic, and real
parallelism only up to the machine's free cores. Writes scaling.parquet / scaling.png (the
same format as `evomerge evolve-scaling`) and prints the table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def run_with_nodes(n_nodes: int, cfg, work: Path) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from evomerge.pipelines.evolve.scaling import measure_one

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for _ in range(n_nodes):
            cluster.add_node(num_cpus=1, resources={"evomerge_node": 1})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        return measure_one(cfg, n_nodes, "genome", "small", work)
    finally:
        ray.shutdown()
        cluster.shutdown()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", default="1,2,4")
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--generations", type=int, default=3)
    p.add_argument("--cross-rate", type=float, default=0.9, help="high: many new candidates per round")
    p.add_argument("--max-samples", type=int, default=64)
    p.add_argument("--out", default="runs/bench/cluster_scaling")
    args = p.parse_args(argv)

    from evomerge.config import config_from_dict
    from evomerge.zoo import ensure_zoo
    from evomerge.pipelines.evolve.scaling import add_speedups, write_scaling

    ensure_zoo("small")
    cfg = config_from_dict({
        "seed": 0,
        "evaluation": {"max_samples": args.max_samples},
        "genome": {"population": args.population, "generations": args.generations,
                   "early_stop_iter": args.generations, "cross_rate": args.cross_rate},
        "ray": {"cpus_per_actor": 1, "max_restarts": 0},
    })
    work = Path(tempfile.mkdtemp(prefix="evomerge-bench-"))
    rows = []
    for n in [int(x) for x in args.nodes.split(",")]:
        row = run_with_nodes(n, cfg, work)
        rows.append(row)
        print(f"{n} node(s): {row['evaluations']} evaluations, {row['eval_seconds']:.2f} s evaluating, "
              f"{row['total_seconds']:.2f} s end to end", flush=True)
    add_speedups(rows)
    files = write_scaling(rows, Path(args.out), title="simulated nodes (ray.cluster_utils.Cluster)")
    print(f"\n{'nodes':>5} {'evals/s':>8} {'speedup':>8} {'effic.':>7} {'e2e s':>7} {'e2e speedup':>11}")
    for r in rows:
        print(f"{r['n_actors']:>5} {r['evals_per_s']:>8.2f} {r['speedup']:>8.2f} {r['efficiency']:>7.2f} "
              f"{r['total_seconds']:>7.1f} {r['e2e_speedup']:>11.2f}")
    print(f"\ntable: {files['table']}\nfigure: {files['figure']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
