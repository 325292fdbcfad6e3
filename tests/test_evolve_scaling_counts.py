"""`evomerge evolve-scaling`'s actor counts: each one checked against the cluster (the check
`evolve` makes on connect) before the first run, and the default 1, 2, 4, ... following what an
actor requests (CPUs, or a GPU), not the `evomerge_node` resource of `clusters/local/start_head.sh`.

One real local Ray for the module, shaped like that head: 2 CPUs and `evomerge_node: 1`. The
runs themselves are replaced by a stand-in (``measure_one``) that records the counts it is
asked for: what is tested is which counts are run, refused, and what is left on disk."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from _cli_helpers import one_error, run_cli
from evomerge.config import config_from_dict
from evomerge.errors import ConfigError
from evomerge.pipelines.evolve import scaling
from evomerge.pipelines.evolve.scaling import scaling_counts


def _cfg(**ray):
    return config_from_dict({"ray": ray}, "test")


# --- the counts, from a cluster's resources (no Ray) ------------------------------------------

@pytest.mark.parametrize("ray_cfg, resources, expected", [
    ({}, {"CPU": 2.0, "evomerge_node": 1.0}, [1, 2]),  # start_head.sh on 2 CPUs: not [1]
    ({"num_actors": 1}, {"CPU": 8.0, "evomerge_node": 3.0}, [1, 2, 4, 8]),  # ray.num_actors is not the limit
    ({"cpus_per_actor": 2}, {"CPU": 8.0, "evomerge_node": 1.0}, [1, 2, 4]),
    ({"cpus_per_actor": 0.5}, {"CPU": 3.0}, [1, 2, 4]),
    ({}, {"CPU": 16.0, "GPU": 4.0, "evomerge_node": 2.0}, [1, 2, 4]),  # one per GPU
    ({"gpus_per_actor": 0.5}, {"CPU": 16.0, "GPU": 3.0}, [1, 2, 4]),
    ({}, {"CPU": 1.0}, [1]),
])
def test_default_counts_follow_what_an_actor_requests(ray_cfg, resources, expected) -> None:
    assert scaling_counts(_cfg(**ray_cfg), None, resources) == expected


def test_a_count_the_cluster_cannot_hold_is_refused_naming_it() -> None:
    assert scaling_counts(_cfg(), [4, 1, 2, 1], {"CPU": 4.0}) == [1, 2, 4]
    with pytest.raises(ConfigError, match=r"^--actors 4: `ray.num_actors` x `ray.cpus_per_actor` = 4 x 1 = 4 CPUs "
                                          r"requested, but the Ray cluster has 2 CPU\(s\)$"):
        scaling_counts(_cfg(), [1, 4], {"CPU": 2.0, "evomerge_node": 1.0})
    with pytest.raises(ConfigError, match=r"^--actors 3: .* 3 GPUs requested, but the Ray cluster has 2 GPU"):
        scaling_counts(_cfg(), [1, 3], {"CPU": 16.0, "GPU": 2.0})
    with pytest.raises(ConfigError, match=r"`ray.cpus_per_actor` is 4 but the Ray cluster has 2 CPU"):
        scaling_counts(_cfg(cpus_per_actor=4), None, {"CPU": 2.0})


# --- the command, on a real Ray shaped like start_head.sh's head --------------------------------

@pytest.fixture(scope="module")
def head():
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=0, resources={"evomerge_node": 1},
             include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def runs(monkeypatch):
    """``measure_one`` stand-in: records the counts run; a row of the right shape, made up."""
    seen: list[int] = []

    def measure_one(cfg, n, algo, zoo_profile, work_dir):
        (work_dir / f"actors-{n}").mkdir(parents=True)  # what a real run leaves while in flight
        seen.append(n)
        return {"n_actors": n, "n_nodes": 1, "evaluations": 20, "eval_seconds": 4.0 / n, "total_seconds": 6.0 / n,
                "evals_per_s": 5.0 * n, "best_fitness": 0.5, "actor_busy_s": "[]"}

    monkeypatch.setattr(scaling, "measure_one", measure_one)
    return seen


def test_default_counts_go_up_to_the_cluster_cpus(head, runs, tmp_path, capsys) -> None:
    out = tmp_path / "sc"
    code, stdout, err = run_cli(["evolve-scaling", "--config", "jobs/configs/evolve_small.yaml", "--small",
                                 "--out", out], capsys)
    assert code == 0, err
    assert runs == [1, 2] and "2 actor(s)" in stdout
    assert pq.read_table(out / "scaling.parquet").column("n_actors").to_pylist() == [1, 2]
    assert sorted(p.name for p in out.iterdir()) == ["scaling.parquet", "scaling.png"]


def test_too_many_actors_refused_before_any_run_leaving_nothing(head, runs, tmp_path, capsys) -> None:
    out = tmp_path / "sc4"
    line = one_error(["evolve-scaling", "--config", "jobs/configs/evolve_small.yaml", "--small",
                      "--actors", "1,4", "--out", out], capsys)
    assert line == ("error: --actors 4: `ray.num_actors` x `ray.cpus_per_actor` = 4 x 1 = 4 CPUs requested, "
                    "but the Ray cluster has 2 CPU(s)")
    assert runs == [] and not out.exists()


def test_a_run_failing_midway_leaves_no_output_folder(head, runs, monkeypatch, tmp_path, capsys) -> None:
    ok = scaling.measure_one

    def second_fails(cfg, n, *args):
        if n == 2:
            (args[-1] / "actors-2").mkdir()
            raise ConfigError("actors-2: failed")
        return ok(cfg, n, *args)

    monkeypatch.setattr(scaling, "measure_one", second_fails)
    out = tmp_path / "mid"
    assert one_error(["evolve-scaling", "--small", "--actors", "1,2", "--out", out], capsys) == "error: actors-2: failed"
    assert runs == [1] and not out.exists()
    kept = tmp_path / "kept"  # a folder that was there stays, without the runs' scratch folder
    (kept / "notes.txt").parent.mkdir()
    (kept / "notes.txt").write_text("mine")
    assert one_error(["evolve-scaling", "--small", "--actors", "1,2", "--out", kept], capsys) == "error: actors-2: failed"
    assert [p.name for p in kept.iterdir()] == ["notes.txt"]
