"""What ``evomerge evolve`` writes for its best individual (``final.write_best``), on the shipped
small zoo's real files, read back with peft (no Ray: the writer is handed the weights an actor
would send). LoRA pools give a peft adapter (in delta space beside the exact dense task vector,
as its truncated SVD at the sum of the experts' ranks); full fine-tunes give a task vector."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from evomerge.config import config_from_dict
from evomerge.distributed.actors import numpy_to_td, td_to_numpy
from evomerge.pipelines.evolve.final import write_best
from evomerge.pipelines.inputs import prepare_inputs
from evomerge.search import expert_id

NAMES = ["rev_digits", "sort_digits"]  # rank-8 experts: the adapter of a dense result has rank 16


def inputs_for(space: str, **cfg):
    return prepare_inputs(config_from_dict(cfg), experts=NAMES, tasks=NAMES, space=space)


@pytest.fixture(scope="module")
def delta_inputs(small_zoo):
    return inputs_for("delta")


def experts(inputs) -> list[dict[str, torch.Tensor]]:
    return [numpy_to_td(inputs.experts[expert_id(i)]) for i in range(len(NAMES))]


def peft_delta(base_dir, adapter_dir) -> dict[str, torch.Tensor]:
    """The change of every base weight once peft loads the adapter and merges it in."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    after = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload().state_dict()
    return {k: after[k] - before[k] for k in before if not torch.equal(after[k], before[k])}


def relative_error(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    assert set(got) == set(ref)
    num = sum(float((got[k].double() - ref[k].double()).pow(2).sum()) for k in ref)
    return (num / sum(float(ref[k].double().pow(2).sum()) for k in ref)) ** 0.5


def test_linear_combination_gives_an_exact_adapter(delta_inputs, small_zoo, tmp_path):
    e0, e1 = experts(delta_inputs)
    best = {k: 0.7 * e0[k] + 0.6 * e1[k] for k in e0}
    out = write_best(delta_inputs, td_to_numpy(best), None, tmp_path)
    assert (out["adapter_dir"], out["task_vector_dir"]) == (tmp_path / "best_adapter", tmp_path / "best_task_vector")
    dense = load_file(str(out["task_vector_dir"] / "task_vector.safetensors"))
    assert set(dense) == set(best) and all(torch.equal(dense[k], best[k]) for k in best)
    svd = out["adapter_svd"]
    assert svd["ranks"] == [16] and svd["relative_error"] < 1e-5 and svd["max_module_relative_error"] < 1e-5
    assert relative_error(peft_delta(small_zoo.base_dir, out["adapter_dir"]), dense) < 1e-5


def test_nonlinear_merge_is_truncated_and_the_loss_reported(delta_inputs, small_zoo, tmp_path):
    from evomerge.merging.apply import merge_tensordicts

    best = merge_tensordicts("ties", experts(delta_inputs), params={"density": 0.5})  # full rank (64)
    out = write_best(delta_inputs, td_to_numpy(best), None, tmp_path)
    svd = out["adapter_svd"]
    assert svd["ranks"] == [16] and 0.05 < svd["relative_error"] <= svd["max_module_relative_error"] < 1
    dense = load_file(str(out["task_vector_dir"] / "task_vector.safetensors"))
    # the error of the adapter peft loads is the one reported
    assert relative_error(peft_delta(small_zoo.base_dir, out["adapter_dir"]), dense) == pytest.approx(
        svd["relative_error"], rel=1e-4)


def test_ab_space_writes_the_adapter_as_it_is_and_rht_on_deltas_goes_through_the_svd(small_zoo, tmp_path):
    from evomerge.experts.types import ab_to_lora, lora_deltas

    inputs = inputs_for("ab")
    e0, e1 = experts(inputs)
    best = {k: 0.5 * (e0[k] + e1[k]) for k in e0}  # A/B factors
    plain = write_best(inputs, td_to_numpy(best), None, tmp_path / "plain")
    assert plain["task_vector_dir"] is None and plain["adapter_svd"] is None
    want = lora_deltas(ab_to_lora(best, inputs.fan_in_fan_out), torch.float32)
    assert relative_error(peft_delta(small_zoo.base_dir, plain["adapter_dir"]), want) < 1e-6
    rht = config_from_dict({"rht": {"enabled": True, "domain": "delta", "sigma_g": 0.3, "gamma": 0.7}}).rht
    dense = write_best(inputs, td_to_numpy(best), rht, tmp_path / "rht")
    assert dense["task_vector_dir"].is_dir() and dense["adapter_svd"]["ranks"] == [16]


def test_full_fine_tunes_keep_their_task_vector(small_zoo, tmp_path):
    full = small_zoo.full_dirs
    if not full:
        pytest.skip("this zoo was built without full fine-tunes")
    cfg = {"experts": {"base": str(small_zoo.base_dir), "experts": [{"name": t, "path": str(full[t])} for t in NAMES]},
           "evaluation": {"task_files": {t: str(small_zoo.root / "tasks" / t) for t in NAMES}}}
    inputs = inputs_for("delta", **cfg)
    assert inputs.kind == "full" and not inputs.lora_ranks
    e0, e1 = experts(inputs)
    out = write_best(inputs, td_to_numpy({k: e0[k] - e1[k] for k in e0}), None, tmp_path)
    assert out == {"adapter_dir": None, "task_vector_dir": tmp_path / "best_task_vector", "adapter_svd": None}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_task_vector"]


def test_without_svd_adapter_the_exact_dense_result_alone(delta_inputs, tmp_path):
    """The scale driver's search cells (``svd_adapter=False``): no SVD, no adapter, the task vector bit for bit."""
    e0, e1 = experts(delta_inputs)
    best = {k: 0.7 * e0[k] + 0.6 * e1[k] for k in e0}
    out = write_best(delta_inputs, td_to_numpy(best), None, tmp_path, svd_adapter=False)
    assert out == {"adapter_dir": None, "task_vector_dir": tmp_path / "best_task_vector", "adapter_svd": None}
    assert not (tmp_path / "best_adapter").exists()
    dense = load_file(str(out["task_vector_dir"] / "task_vector.safetensors"))
    assert all(torch.equal(dense[k], best[k]) for k in best)
