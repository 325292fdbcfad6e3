"""How evaluation throughput and end-to-end time of one evolutionary run scale with population
actors: ``evomerge evolve-scaling`` and ``benchmarks/cluster_scaling.py``.

The same run (same seed, so the same work) once per actor count, written as ``scaling.parquet``
(one row per count, with the nodes its actors used) and ``scaling.png`` (speedup and efficiency).
Actors are placed with a SPREAD placement group, over as many nodes as the count allows (several
on a node once there are more actors than nodes). Every count is checked against the cluster before the first
run (:func:`scaling_counts`). Per-actor busy times are kept to show imbalance on heterogeneous
nodes.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Mapping

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


def measure_scaling(cfg, actor_counts: list[int] | None, algo: str = "genome", zoo_profile: str = "small",
                    work_dir: Path | None = None, log=print) -> list[dict]:
    """Rows for every actor count (None: :func:`scaling_counts`' default), with speedup/efficiency
    relative to the smallest count.

    Connects to Ray (``cfg.ray``; an existing connection is reused) and checks every count
    against the cluster before the first run, so an impossible count costs no measurement.
    ``work_dir`` (default: a new temporary folder) holds the runs in flight; a folder this call
    made is removed again, also when a run fails."""
    from evomerge.distributed.cluster import cluster_resources, ray_session

    with ray_session(cfg.ray):
        counts = scaling_counts(cfg, actor_counts, cluster_resources())
        work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="evomerge-scaling-"))
        made = work_dir is None or not work.exists()
        rows = []
        try:
            for n in counts:
                row = measure_one(cfg, n, algo, zoo_profile, work)
                log(f"{n} actor(s): {row['evaluations']} evaluations in {row['eval_seconds']:.2f} s "
                    f"({row['evals_per_s']:.2f}/s), end to end {row['total_seconds']:.2f} s")
                rows.append(row)
        finally:
            if made:
                shutil.rmtree(work, ignore_errors=True)
    return add_speedups(rows)


def scaling_counts(cfg, requested: list[int] | None, resources: Mapping[str, float]) -> list[int]:
    """The actor counts to measure on a cluster offering ``resources``, smallest first.

    Each count is checked by the check ``evomerge evolve`` makes on connect
    (:func:`~evomerge.distributed.cluster.plan_actors`: ``ray.cpus_per_actor`` CPUs, and a GPU or
    ``ray.gpus_per_actor`` on a GPU cluster, per actor), so a count the cluster cannot hold is
    refused (:class:`~evomerge.errors.ConfigError`, naming it) before any run. ``requested`` None:
    1, 2, 4, ... up to as many actors as that check lets the cluster hold (``ray.num_actors`` of
    the config is ignored, as for explicit counts)."""
    from evomerge.distributed.cluster import plan_actors
    from evomerge.errors import ConfigError

    if requested is None:
        most = plan_actors(with_actors(cfg, None).ray, resources).n_actors
        return [2 ** i for i in range(most.bit_length())]
    counts = sorted(set(requested))
    for n in counts:
        try:
            plan_actors(with_actors(cfg, n).ray, resources)
        except ConfigError as err:
            raise ConfigError(f"--actors {n}: {err}") from None
    return counts


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
    a1.set_xlabel("population actors")
    a1.set_ylabel("speedup")
    a1.legend()
    a2.plot(n, [r["efficiency"] for r in rows], "o-")
    a2.axhline(1.0, color="k", ls="--", lw=1)
    a2.set_ylim(0, 1.2)
    a2.set_xlabel("population actors")
    for ax in (a1, a2):
        ax.set_xticks(n)
    a2.set_ylabel("parallel efficiency")
    fig.suptitle(title)
    fig.tight_layout()
    save_png_atomic(fig, out_dir / "scaling.png", tight_bbox=False)
    plt.close(fig)
    return {"table": out_dir / "scaling.parquet", "figure": out_dir / "scaling.png"}
