"""How evaluation throughput and end-to-end time of one evolutionary run scale with population
actors (one per node): ``evomerge evolve-scaling`` and ``benchmarks/cluster_scaling.py``.

The same run (same seed, so the same work) once per actor count, written as ``scaling.parquet``
(one row per count) and ``scaling.png`` (speedup and efficiency). Actors are placed with a SPREAD
placement group, one per node (one per GPU on GPU nodes), so on a cluster "more actors" means
"more nodes". Per-actor busy times are kept to show imbalance on heterogeneous nodes.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

COLUMNS = ("n_actors", "n_nodes", "evaluations", "eval_seconds", "total_seconds", "evals_per_s",
           "speedup", "efficiency", "e2e_speedup", "best_fitness", "actor_busy_s")


def with_actors(cfg, n: int):
    from evomerge.config.overrides import override

    return override(cfg, {"ray.num_actors": n}, "scaling")


def _count_evaluations(history: Path) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(history).num_rows if history.is_file() else 0


def measure_one(cfg, n: int, algo: str, zoo_profile: str, work_dir: Path) -> dict:
    """One run with ``n`` actors: wall time, evaluation time, throughput, where the actors ran."""
    from evomerge.pipelines.evolve.run import run_evolve

    run_dir = work_dir / f"actors-{n}"
    shutil.rmtree(run_dir, ignore_errors=True)
    nodes: set[str] = set()

    def where(round_: int, pool) -> None:  # queued behind the round's work, so it adds no wait
        if round_ == 0 and not nodes:
            import ray

            nodes.update(i.get("node_id", "") for i in ray.get([a.info.remote() for a in pool.actors]))

    t0 = time.perf_counter()
    res = run_evolve(with_actors(cfg, n), algo, run_dir, progress=False, zoo_profile=zoo_profile,
                     write_adapter=False, on_dispatch=where)
    total = time.perf_counter() - t0
    evaluations = _count_evaluations(res.history_path)
    eval_s = float(res.stats.get("wall_s", total))
    busy = [round(sum(float(v) for v in a.values()), 4) for a in res.stats.get("actors", [])]
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"n_actors": n, "n_nodes": len(nodes - {""}) or None, "evaluations": evaluations, "eval_seconds": eval_s,
            "total_seconds": total, "evals_per_s": evaluations / eval_s if eval_s > 0 else float("nan"),
            "best_fitness": float(res.best_fitness), "actor_busy_s": json.dumps(busy)}


def measure_scaling(cfg, actor_counts: list[int], algo: str = "genome", zoo_profile: str = "small",
                    work_dir: Path | None = None, log=print) -> list[dict]:
    """Rows for every actor count, with speedup/efficiency relative to the smallest count."""
    work = Path(work_dir or tempfile.mkdtemp(prefix="evomerge-scaling-"))
    rows = []
    for n in sorted(set(actor_counts)):
        row = measure_one(cfg, n, algo, zoo_profile, work)
        log(f"{n} actor(s): {row['evaluations']} evaluations in {row['eval_seconds']:.2f} s "
            f"({row['evals_per_s']:.2f}/s), end to end {row['total_seconds']:.2f} s")
        rows.append(row)
    return add_speedups(rows)


def add_speedups(rows: list[dict]) -> list[dict]:
    """Speedup (throughput), efficiency and end-to-end speedup relative to the first row."""
    base = rows[0]
    for r in rows:
        r["speedup"] = r["evals_per_s"] / base["evals_per_s"]
        r["efficiency"] = r["speedup"] / (r["n_actors"] / base["n_actors"])
        r["e2e_speedup"] = base["total_seconds"] / r["total_seconds"]
    return rows


def write_scaling(rows: list[dict], out_dir: Path, title: str = "evomerge scaling") -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pyarrow as pa

    from evomerge.io import save_png_atomic, write_parquet_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    table = pa.table({c: [r.get(c) for r in rows] for c in COLUMNS})
    write_parquet_atomic(out_dir / "scaling.parquet", table)
    n = [r["n_actors"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    a1.plot(n, n, "k--", lw=1, label="ideal")
    a1.plot(n, [r["speedup"] for r in rows], "o-", label="evaluation throughput")
    a1.plot(n, [r["e2e_speedup"] for r in rows], "s-", label="end to end")
    a1.set_xlabel("population actors (one per node)")
    a1.set_ylabel("speedup")
    a1.legend()
    a2.plot(n, [r["efficiency"] for r in rows], "o-")
    a2.axhline(1.0, color="k", ls="--", lw=1)
    a2.set_ylim(0, 1.2)
    a2.set_xlabel("population actors (one per node)")
    for ax in (a1, a2):
        ax.set_xticks(n)
    a2.set_ylabel("parallel efficiency")
    fig.suptitle(title)
    fig.tight_layout()
    save_png_atomic(fig, out_dir / "scaling.png", tight_bbox=False)
    plt.close(fig)
    return {"table": out_dir / "scaling.parquet", "figure": out_dir / "scaling.png"}


def default_counts() -> list[int]:
    """1, 2, 4, ... up to the number of population slots (GPUs, else evomerge_node resources, else CPUs)."""
    import ray

    res = ray.cluster_resources()
    slots = int(res.get("GPU", 0)) or int(res.get("evomerge_node", 0)) or int(res.get("CPU", 1))
    out, n = [], 1
    while n <= slots:
        out.append(n)
        n *= 2
    return out
