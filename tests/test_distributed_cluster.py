"""A two-node Ray cluster (``ray.cluster_utils.Cluster``) whose worker nodes declare one fake
GPU each: one population actor per GPU node, joined through ``ray.address``.

Its own module: a ``Cluster`` must not share a process with a plain ``ray.init``.
"""

from __future__ import annotations

import pytest
import torch

from evomerge.config import config_from_dict
from evomerge.errors import ConfigError
from evomerge.pipelines.evolve.run import run_evolve

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

EXPERTS = ["rev_digits", "sort_digits"]


@pytest.fixture(scope="module")
def cluster(small_zoo):
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for i in range(2):
        c.add_node(num_cpus=1, num_gpus=1, resources={f"gpu_node_{i}": 1})
    c.wait_for_nodes()
    try:
        yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.shutdown()


def cfg_for(address, **ray_cfg):
    return config_from_dict({
        "seed": 1, "evaluation": {"max_samples": 20},
        "genome": {"population": 2, "generations": 1, "cross_rate": 1.0, "ind_mut_rate": 0.0},
        "ray": {"address": address, **ray_cfg},
    })


@pytest.mark.slow
def test_one_actor_per_gpu_node(cluster, tmp_path):
    res = run_evolve(cfg_for(cluster.address), "genome", tmp_path / "run", experts=EXPERTS, tasks=EXPERTS,
                     progress=False)
    infos = res.stats["actor_info"]
    assert len(infos) == 2  # default: one actor per GPU
    assert len({i["node_id"] for i in infos}) == 2
    gpu_nodes = {n["NodeID"] for n in ray_nodes(cluster) if n["Resources"].get("GPU")}
    assert {i["node_id"] for i in infos} == gpu_nodes
    assert all(len(i["gpu_ids"]) == 1 for i in infos)
    # the nodes' GPUs are declared, not real: an actor computes on cuda only where torch sees one
    assert all(i["device"] == ("cuda" if torch.cuda.is_available() else "cpu") for i in infos)
    import pyarrow.parquet as pq

    rows = pq.read_table(res.history_path).to_pylist()
    # the run returns the best start unless a found individual beats it by more than select_margin
    assert next(r["fitness"] for r in rows if r["id"] == res.best_id) == res.best_fitness
    assert max(r["fitness"] for r in rows) <= res.best_fitness + cfg_for(cluster.address).genome.select_margin
    assert not ray.is_initialized()  # the run started its own connection and closed it


def ray_nodes(cluster):
    ray.init(address=cluster.address)
    try:
        return [n for n in ray.nodes() if n["Alive"]]
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_more_gpus_than_the_cluster_has_is_refused(cluster, tmp_path):
    with pytest.raises(ConfigError, match=r"3 x 1 = 3 GPUs requested, but the Ray cluster has 2 GPU"):
        run_evolve(cfg_for(cluster.address, num_actors=3, gpus_per_actor=1), "genome", tmp_path / "run",
                   experts=EXPERTS, tasks=EXPERTS, progress=False)
    assert not (tmp_path / "run").exists()
    assert not ray.is_initialized()
