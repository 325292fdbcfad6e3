"""merge_task_vectors / merge_tensordicts: streaming, per-key seeds, stats, errors."""

from __future__ import annotations

import pytest
import torch

from evomerge.errors import ConfigError
from evomerge.merging import get_merge_method
from evomerge.merging.apply import merge_one, merge_task_vectors, merge_tensordicts
from evomerge.merging.types import PerTaskMerge, derive_seed, key_generator


def _td(seed, keys=("a.weight", "b.weight", "c.bias")):
    g = torch.Generator().manual_seed(seed)
    shapes = {"a.weight": (8, 6), "b.weight": (5, 5), "c.bias": (8,)}
    return {k: torch.randn(shapes[k], generator=g) for k in keys}


def _stream(dicts, keys):
    for k in keys:
        yield k, torch.stack([d[k] for d in dicts])


def test_result_per_key_is_independent_of_order_and_presence():
    dicts = [_td(i) for i in range(3)]
    keys = list(dicts[0])
    fwd = merge_task_vectors("dare_ties", _stream(dicts, keys), [1.0, 0.5, 2.0], {"density": 0.5}, seed=3)
    rev = merge_task_vectors("dare_ties", _stream(dicts, keys[::-1]), [1.0, 0.5, 2.0], {"density": 0.5}, seed=3)
    alone = merge_task_vectors("dare_ties", _stream(dicts, ["b.weight"]), [1.0, 0.5, 2.0], {"density": 0.5}, seed=3)
    assert all(torch.equal(fwd[k], rev[k]) for k in keys)
    assert torch.equal(fwd["b.weight"], alone["b.weight"])
    other = merge_task_vectors("dare_ties", _stream(dicts, keys), [1.0, 0.5, 2.0], {"density": 0.5}, seed=4)
    assert not torch.equal(fwd["a.weight"], other["a.weight"])


def test_per_key_generator_is_the_documented_one():
    dicts = [_td(i) for i in range(2)]
    out = merge_task_vectors("dare_linear", _stream(dicts, ["a.weight"]), None, {"density": 0.5}, seed=11)
    stacked = torch.stack([d["a.weight"] for d in dicts])
    direct = get_merge_method("dare_linear")(stacked, None, generator=key_generator(11, "a.weight"), density=0.5)
    assert torch.equal(out["a.weight"], direct)
    assert derive_seed(11, "a.weight") == derive_seed(11, "a.weight") != derive_seed(11, "b.weight")
    assert 0 <= derive_seed(11, "a.weight") < 2**63


def test_stats_are_routed_per_key_and_errors_name_the_tensor():
    dicts = [_td(i) for i in range(2)]
    fisher = {k: torch.ones((2, *v.shape)) for k, v in dicts[0].items()}
    fisher["a.weight"][0] = 3.0
    out = merge_task_vectors("fisher", _stream(dicts, list(dicts[0])), None, None, stats={k: {"fisher": v} for k, v in fisher.items()})
    expect = (3 * dicts[0]["a.weight"] + dicts[1]["a.weight"]) / 4
    assert torch.allclose(out["a.weight"], expect, atol=1e-6)
    with pytest.raises(ConfigError, match="`b.weight`.*fisher"):
        merge_task_vectors("fisher", _stream(dicts, ["b.weight"]), None, None, stats={"a.weight": {"fisher": fisher["a.weight"]}})
    with pytest.raises(ConfigError, match="needs fisher"):
        merge_task_vectors("fisher", _stream(dicts, ["a.weight"]))


def test_params_validated_before_reading_the_stream():
    def stream():
        raise AssertionError("stream must not be read")
        yield

    with pytest.raises(ConfigError, match="`ties`: `density`"):
        merge_task_vectors("ties", stream(), params={"density": 0.0})
    with pytest.raises(ConfigError, match="unknown merge method `nope`"):
        merge_task_vectors("nope", [])


def test_non_float_tensors_pass_through_and_emr_gives_per_task():
    out = merge_one("ties", "pos_ids", torch.stack([torch.arange(4), torch.arange(4)]))
    assert torch.equal(out, torch.arange(4))
    dicts = [_td(i) for i in range(3)]
    res = merge_task_vectors("emr", _stream(dicts, ["a.weight"]))
    assert isinstance(res["a.weight"], PerTaskMerge)
    flat = merge_tensordicts("emr", dicts)
    assert torch.equal(flat["a.weight"], res["a.weight"].unified)


def test_merge_tensordicts_matches_operator_and_checks_keys():
    dicts = [_td(i) for i in range(3)]
    out = merge_tensordicts("task_arithmetic", dicts, [0.2, 0.3, 0.5], {"lambda": 2.0})
    for k in dicts[0]:
        assert torch.allclose(out[k], 2.0 * sum(w * d[k] for w, d in zip([0.2, 0.3, 0.5], dicts)), atol=1e-6)
    with pytest.raises(ConfigError, match="different keys"):
        merge_tensordicts("task_arithmetic", [dicts[0], _td(5, keys=("a.weight",))])
    with pytest.raises(ConfigError, match="one entry per expert"):
        merge_tensordicts("task_arithmetic", dicts, [1.0, 2.0])


def test_progress_bar_does_not_change_results(capsys):
    dicts = [_td(i) for i in range(2)]
    a = merge_task_vectors("ties", _stream(dicts, list(dicts[0])), progress=True)
    b = merge_task_vectors("ties", _stream(dicts, list(dicts[0])))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_task_vector_leaves_the_pools_stacked_deltas_alone(small_zoo):
    """Regression: ``ExpertPool.task_vector`` subtracted the base in place from a reader's cached
    tensor, so every later merge of that pool (after Fisher/RegMean statistics) was wrong."""
    from evomerge.experts import load_pool

    tasks = small_zoo.tasks[:2]
    pool = load_pool([small_zoo.full_dirs[t] for t in tasks], base=small_zoo.base_dir)
    before = dict(pool.iter_stacked())
    pool.task_vector(0)
    pool.task_vector(0)
    for k, v in pool.iter_stacked():
        assert torch.equal(v, before[k]), k


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_a_cuda_device_without_cuda_names_the_parameter_before_any_tensor():
    def stream():
        raise AssertionError("a tensor was read")
        yield  # pragma: no cover

    with pytest.raises(ConfigError, match=r"^merge_task_vectors: `device` cuda: CUDA is not available"):
        merge_task_vectors("ties", stream(), device="cuda")
    with pytest.raises(ConfigError, match=r"^merge_task_vectors: `device` cuda:1: CUDA is not available"):
        merge_task_vectors("ties", stream(), device=torch.device("cuda:1"))


def test_other_devices_are_taken_as_torch_takes_them():
    """Only a cuda device is checked up front: `meta` (shapes only, as the model-scale cells use it) runs."""
    out = merge_task_vectors("task_arithmetic", [("k", torch.ones(2, 3))], device="meta")
    assert out["k"].device.type == "meta" and out["k"].shape == (3,)


@pytest.mark.parametrize("space", ["ab", "concat"])
def test_merge_lora_refuses_a_rank_it_would_ignore(space):
    """``rank`` compresses a delta-space merge; in ab/concat it returned full-rank factors silently."""
    from evomerge.experts.types import LoraModule
    from evomerge.merging.apply import merge_lora

    g = torch.Generator().manual_seed(0)
    experts = [{"w": LoraModule(A=torch.randn(4, 6, generator=g), B=torch.randn(5, 4, generator=g), scale=1.0)}
               for _ in range(2)]
    with pytest.raises(ConfigError, match=rf"`rank` \(2\) compresses a merge of the deltas .*space `{space}`"):
        merge_lora("task_arithmetic", experts, space=space, rank=2)
    assert merge_lora("task_arithmetic", experts, space="delta", rank=2)["w"].A.shape[0] == 2
