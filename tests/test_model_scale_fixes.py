"""What ``benchmarks/model_scale.py`` led to, checked on CPU at the small zoo's size: the
teacher-forced metrics computed a few rows at a time equal the one-call computation, and a scale
cell merges on the device it asks for (its evaluator's: a GPU actor's GPU), not always the CPU."""

from __future__ import annotations

import pytest
import torch

from evomerge.evaluation import metrics as M
from evomerge.evaluation.encoding import IGNORE

torch.set_num_threads(1)


def _one_call(logits, labels):
    """The metrics as one log-softmax over the whole batch (the computation before chunking)."""
    mask = labels != IGNORE
    safe = labels.clamp(min=0)
    nll = -torch.log_softmax(logits.float(), dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    correct = (logits.argmax(-1) == safe) & mask
    n = mask.sum(-1).clamp(min=1)
    return {"token_accuracy": correct.sum(-1).double() / n, "exact_match": (correct.sum(-1) == mask.sum(-1)).double(),
            "cross_entropy": (nll * mask).sum(-1).double() / n}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,chunk", [(9, 1), (9, 3 * 6 * 50), (9, 1 << 22), (1, 1), (0, 5)])
def test_chunked_teacher_forced_equals_one_call(dtype, rows, chunk):
    g = torch.Generator().manual_seed(rows * 7 + chunk % 13)
    # a slice [:, start:] of the logits, as the evaluator passes them (not contiguous)
    logits = (3 * torch.randn(rows, 8, 50, generator=g)).to(dtype)[:, 2:]
    labels = torch.randint(0, 50, (rows, 6), generator=g)
    labels[:, :2] = IGNORE
    if rows:
        labels[0, 2:] = logits[0, 2:].argmax(-1)  # one row entirely right
    got, want = M.teacher_forced(logits, labels, chunk_elems=chunk), _one_call(logits, labels)
    for k in want:
        assert torch.equal(got[k], want[k]), k  # bit for bit: rows are independent
    if rows:
        assert got["exact_match"][0] == 1.0


def test_cell_merge_runs_on_the_device_asked_for(small_zoo, zoo_experts, tmp_path):
    from evomerge.config import config_from_dict
    from evomerge.pipelines.scale.driver import make_context, pool_spec
    from evomerge.pipelines.scale.work import CellWorker

    cfg = config_from_dict({"evaluation": {"max_samples": 8}})
    worker = CellWorker(make_context(cfg, pool_spec(cfg, small_zoo), tmp_path))
    subset = (0, 2)
    names = [worker.ctx.names[i] for i in subset]
    merged = worker.merged("task_arithmetic", subset, 0)
    assert {v.device for v in merged.values()} == {worker.evaluator.device}
    for key, v in merged.items():  # task arithmetic (lambda 1): the sum of the experts' scale * B @ A
        want = sum(zoo_experts[n][key].delta(torch.float32) for n in names)
        torch.testing.assert_close(v, want, rtol=1e-5, atol=1e-7)
    asked = worker.merged("task_arithmetic", subset, 0, device="meta")
    assert {v.device.type for v in asked.values()} == {"meta"}
    assert {k: v.shape for k, v in asked.items()} == {k: v.shape for k, v in merged.items()}
    # by default a cell merges where its evaluator runs (a GPU actor: its GPU), here pointed at meta
    worker.evaluator.device = torch.device("meta")
    assert {v.device.type for v in worker.merged("task_arithmetic", subset, 0).values()} == {"meta"}
