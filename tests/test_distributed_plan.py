"""Pure parts of the Ray layer: actor planning, records and checkpoints, input selection.

No Ray here: these are the checks that must refuse impossible requests before any work.
"""

from __future__ import annotations

import numpy as np
import pytest

from evomerge.config import RayConfig, config_from_dict
from evomerge.pipelines.evolve import records
from evomerge.distributed.actors import numpy_to_td, td_to_numpy
from evomerge.distributed.cluster import plan_actors
from evomerge.pipelines.inputs import select
from evomerge.errors import ConfigError
from evomerge.pipelines.evolve.run import check_static, make_searches
from evomerge.search import Recipe


def test_plan_cpu_actors_default_one_per_cpu():
    plan = plan_actors(RayConfig(), {"CPU": 2.0})
    assert (plan.n_actors, plan.num_cpus, plan.num_gpus) == (2, 1.0, 0.0)
    assert plan.bundles() == [{"CPU": 1.0}, {"CPU": 1.0}]


def test_plan_one_actor_per_gpu_when_gpus_exist():
    plan = plan_actors(RayConfig(), {"CPU": 16.0, "GPU": 4.0})
    assert (plan.n_actors, plan.num_gpus) == (4, 1.0)
    assert plan.bundles()[0] == {"CPU": 1.0, "GPU": 1.0}


def test_plan_fractional_gpus_share_a_gpu():
    plan = plan_actors(RayConfig(gpus_per_actor=0.5), {"CPU": 8.0, "GPU": 2.0})
    assert plan.n_actors == 4


@pytest.mark.parametrize(
    "cfg, resources, words",
    [
        (RayConfig(num_actors=3, gpus_per_actor=1), {"CPU": 8.0, "GPU": 2.0}, ["3 x 1 = 3 GPUs", "2 GPU"]),
        (RayConfig(gpus_per_actor=1), {"CPU": 8.0}, ["no GPUs", "gpus_per_actor"]),
        (RayConfig(num_actors=3), {"CPU": 2.0}, ["3 x 1 = 3 CPUs", "2 CPU"]),
        (RayConfig(cpus_per_actor=4), {"CPU": 2.0}, ["cpus_per_actor", "2 CPU"]),
    ],
)
def test_plan_refuses_impossible_requests(cfg, resources, words):
    with pytest.raises(ConfigError) as err:
        plan_actors(cfg, resources)
    for w in words:
        assert w in str(err.value)


@pytest.mark.parametrize(
    "data, key",
    [
        ({"genome": {"population": 1}}, "genome.population"),
        ({"genome": {"cross_rate": 1.5}}, "genome.cross_rate"),
        ({"genome": {"gene_mut_rate": -0.1}}, "genome.gene_mut_rate"),
        ({"ray": {"gpus_per_actor": -1}}, "ray.gpus_per_actor"),
        ({"rht": {"apply_to": "sometimes"}}, "rht.apply_to"),
    ],
)
def test_config_refuses_impossible_values(data, key):
    with pytest.raises(ConfigError) as err:
        config_from_dict(data, "run.yaml")
    assert f"`{key}`" in str(err.value) and "run.yaml" in str(err.value)


def test_static_checks():
    cfg = config_from_dict({"ray": {"islands": 2}})
    with pytest.raises(ConfigError, match="only GENOME"):
        check_static(cfg, "swarm")
    with pytest.raises(ConfigError, match="--algo"):
        check_static(cfg, "cmaes")
    with pytest.raises(ConfigError, match="at least 2 experts"):
        make_searches(cfg, "genome", 1)
    islands = make_searches(cfg, "genome", 4)
    ids = [{r.id for r in s.ask()} for s in islands]
    assert ids[0] and not ids[0] & ids[1]  # island prefixes keep ids apart


def test_select_experts_by_name_or_index():
    names = ["a", "b", "c"]
    assert select(names, None) == [0, 1, 2]
    assert select(names, ["c", 0]) == [2, 0]
    with pytest.raises(ConfigError, match="no expert named 'z'"):
        select(names, ["a", "z"])
    with pytest.raises(ConfigError, match="at least 2"):
        select(names, [1])
    with pytest.raises(ConfigError, match="out of range"):
        select(names, [0, 5])


def test_recipe_inputs_include_velocities():
    move = Recipe("s1.p0", "pso_move", ("s0.p0", "s0.p0", "s0.p1", "s0.p2"), (0.25,) * 4, {"velocity": "stored", "step": 1.0})
    assert move.input_keys() == ("s0.p0", "s0.p1", "s0.p2", "s0.p0/v")
    init = Recipe("s1.p0", "pso_move", ("a", "b", "c", "d"), (0.25,) * 4, {"velocity": "diff", "velocity_ref": "e", "step": 1.0})
    assert init.input_keys()[-1] == "e"
    # a move without a `velocity` param reads the stored velocity (what materialize does)
    bare = Recipe("s1.p1", "pso_move", ("x", "p", "g", "w"), (0.25,) * 4, {"step": 1.0})
    assert bare.input_keys() == ("x", "p", "g", "w", "x/v")


def test_numpy_roundtrip_is_exact():
    import torch

    td = {"w::A": torch.randn(3, 4, generator=torch.Generator().manual_seed(0)), "w::B": torch.ones(5, 3)}
    back = numpy_to_td(td_to_numpy(td))
    assert all(torch.equal(back[k], td[k]) for k in td)


def test_checkpoint_roundtrip_and_latest(tmp_path):
    rng = np.random.default_rng(0)
    w = {"g1.0": {"x.weight::A": rng.standard_normal((2, 3)).astype(np.float32)},
         "g1.0/v": {"x.weight::A": rng.standard_normal((2, 3)).astype(np.float32)}}
    assert records.load_checkpoint(tmp_path) is None
    records.save_checkpoint(tmp_path, 0, w, {"a": 1})
    records.save_checkpoint(tmp_path, 1, w, {"a": 2})
    records.save_checkpoint(tmp_path, 2, w, {"a": 3})
    step, w2, state = records.load_checkpoint(tmp_path)
    assert step == 2 and state == {"a": 3}
    assert set(w2) == set(w) and np.array_equal(w2["g1.0/v"]["x.weight::A"], w["g1.0/v"]["x.weight::A"])
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert kept == ["step_000001", "step_000002"]


def test_history_steps_append_and_truncate(tmp_path):
    row = {"step": 0, "island": 0, "generation": 0, "id": "g0.0", "op": "init_pair", "parents": ["e0", "e1"],
           "weights": [0.4, 0.6], "seed": 7, "params": "{}", "fitness": 0.5, "per_task": {"t1": 0.4, "t2": 0.6}}
    for s in range(3):
        records.write_history_step(tmp_path, s, records.history_table([dict(row, step=s)], ["t1", "t2"]))
    t = records.read_history(tmp_path)
    assert t.column("step").to_pylist() == [0, 1, 2]
    assert t.column("val_t2").to_pylist() == [0.6] * 3
    assert t.column("parents").to_pylist()[0] == ["e0", "e1"]
    assert records.truncate_history(tmp_path, 0) == 2
    assert records.read_history(tmp_path).num_rows == 1
