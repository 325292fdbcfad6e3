"""A worker node lost mid-run: its population actor comes back on a spare node, the run
finishes, and the result equals the undisturbed run's (ray.cluster_utils.Cluster, 4 nodes)."""

from __future__ import annotations

import os
import time

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

FAST_HEALTH_CHECK = {
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 3,
    "health_check_initial_delay_ms": 0,
}


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0, "_system_config": FAST_HEALTH_CHECK})
    workers = [c.add_node(num_cpus=1, num_gpus=0, resources={"evomerge_node": 1}) for _ in range(3)]  # 2 used + 1 spare
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    try:
        yield c, workers
    finally:
        ray.shutdown()
        c.shutdown()


def wait_until_gone(pid: int, timeout_s: float = 60.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":  # exited, not yet reaped
                    return
        except (ProcessLookupError, FileNotFoundError):
            return
        time.sleep(0.1)
    raise TimeoutError(f"actor process {pid} still alive {timeout_s} s after its node was removed")


def config():
    from evomerge.config import config_from_dict

    return config_from_dict({
        "seed": 3,
        "evaluation": {"max_samples": 16},
        "genome": {"population": 4, "generations": 3, "early_stop_iter": 3},
        "ray": {"num_actors": 2, "cpus_per_actor": 1, "max_restarts": 2, "placement_timeout_s": 60},
    })


def test_node_loss_mid_run_gives_the_same_result(cluster, tmp_path) -> None:
    import ray

    from evomerge.pipelines.evolve.run import run_evolve

    c, workers = cluster
    ref = run_evolve(config(), "genome", tmp_path / "ref", progress=False, zoo_profile="small", write_adapter=False)

    killed: list[str] = []
    victim: dict = {}

    def kill_node_of_actor_1(round_: int, pool) -> None:
        """Round 0: note where actor 1 runs (its info call queues behind the round's work).
        Round 1, while it is in flight: remove that node, and wait until the actor's process
        is gone, so the run must notice the loss however quickly the round's work finishes
        (actor calls go worker to worker, so a worker outlives its raylet for a moment)."""
        if round_ == 0 and not victim:
            victim.update(ray.get(pool.actors[1].info.remote()))
        elif round_ == 1 and not killed:
            node = next(n for n in c.worker_nodes if n.node_id == victim["node_id"])
            c.remove_node(node, allow_graceful=False)
            killed.append(victim["node_id"])
            wait_until_gone(victim["pid"])

    res = run_evolve(config(), "genome", tmp_path / "cut", progress=False, zoo_profile="small", write_adapter=False,
                     on_dispatch=kill_node_of_actor_1)
    assert killed, "no node was removed"
    assert sum(res.stats["restarts"]) >= 1 and res.stats["redone_rounds"] >= 1
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert killed[0] not in alive
    assert res.best_id == ref.best_id
    assert res.best_fitness == pytest.approx(ref.best_fitness, abs=1e-9)
    assert res.best_val_per_task == pytest.approx(ref.best_val_per_task, abs=1e-9)
