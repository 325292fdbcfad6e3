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


def test_actor_shares_read_only_experts_and_never_writes_them(small_zoo):
    """Experts arrive from Ray's object store as read-only arrays: a CPU actor keeps them without
    a second copy in its heap, so every operator, RHT and the evaluator must leave them as they
    came (an in-place write would change the shared store object for the driver and every actor)."""
    import numpy as np

    from evomerge.config import config_from_dict
    from evomerge.config.sections import RHTConfig
    from evomerge.distributed.actors import PopulationActor
    from evomerge.pipelines.inputs import prepare_inputs
    from evomerge.search import Recipe, expert_id

    names = list(small_zoo.tasks[:3])
    inputs = prepare_inputs(config_from_dict({"evaluation": {"max_samples": 8}}), experts=names, tasks=names)
    for d in inputs.experts.values():
        for a in d.values():
            a.flags.writeable = False  # as ray.get hands them out
    before = {k: {n: a.copy() for n, a in d.items()} for k, d in inputs.experts.items()}
    actor = PopulationActor(inputs.experts, inputs.evaluator, fan_in_fan_out=inputs.fan_in_fan_out,
                            rht=RHTConfig(enabled=True, seed=3), device="cpu")
    for k, d in inputs.experts.items():  # shared, not copied: a write through the tensor shows in the array
        assert all(actor.experts[k][n].data_ptr() == a.ctypes.data for n, a in d.items())
    e0, e1, e2 = (expert_id(i) for i in range(3))
    rounds = [
        [Recipe("t1", "init_pair", (e0, e1), (0.3, 0.7), {"method": "linear"}, seed=1),
         Recipe("t2", "expert", (e2,), (1.0,), {}, seed=2)],
        [Recipe("t3", "crossover", (e0, "t2"), (0.6, 0.4), {"method": "ties", "merge_params": {"density": 0.5}}, seed=3),
         Recipe("t4", "mutate", (e2,), (), {"sigma": 0.05, "gene_mut_rate": 0.3}, seed=4),
         Recipe("t5", "pso_move", (e0, e0, e1, e2), (0.4, 0.3, 0.2, 0.1),
                {"velocity": "diff", "velocity_ref": e1, "step": 1.0}, seed=5)],
        [Recipe("t6", "pso_move", ("t5", "t5", e1, e2), (0.25, 0.25, 0.25, 0.25), {"velocity": "stored", "step": 0.5}, seed=6),
         Recipe("t7", "crossover", (e1, e2), (0.5, 0.5), {"method": "blx", "blx_alpha": 1.2}, seed=7),
         Recipe("t8", "pad", (e0, e2), (1.3, -0.3), {}, seed=8),
         Recipe("t9", "crossover", (e0, e1), (0.5, 0.5), {"method": "dare_ties", "merge_params": {"density": 0.5}}, seed=9)],
    ]
    for batch in rounds:
        actor.materialize_and_evaluate([r.to_dict() for r in batch])
    actor.evaluate_keys([e0, e1, e2], raw=True)
    actor.evaluate_keys([e0, e1, e2])  # RHT'd candidates
    actor.ensemble([e0, e1, e2], "validation")
    for k, d in before.items():
        for n, a in d.items():
            assert np.array_equal(inputs.experts[k][n], a), (k, n)


def test_actor_rebuilds_individuals_held_as_recipes_bit_for_bit(small_zoo):
    """Individuals made by elementwise operators within MAX_REBUILD materialisations are held as
    recipes and rebuilt when read; every score, every fetched weight and every child equals what
    a store of eagerly materialised individuals gives; the actor holds weights only for registry
    merges, deeper chains and individuals whose inputs were dropped."""
    from evomerge.config import config_from_dict
    from evomerge.distributed.actors import PopulationActor
    from evomerge.pipelines.inputs import prepare_inputs
    from evomerge.search import Recipe, expert_id, materialize

    names = list(small_zoo.tasks[:3])
    inputs = prepare_inputs(config_from_dict({"evaluation": {"max_samples": 8}}), experts=names, tasks=names)
    actor = PopulationActor(inputs.experts, inputs.evaluator, fan_in_fan_out=inputs.fan_in_fan_out, device="cpu")
    e0, e1, e2 = (expert_id(i) for i in range(3))
    rounds = [
        [Recipe("p1", "init_pair", (e0, e1), (0.3, 0.7), {"method": "linear"}, seed=1),
         Recipe("p2", "init_sum", (e0, e1, e2), (0.5, 0.5, 0.5), {}, seed=2),
         Recipe("p3", "crossover", (e1, e2), (0.5, 0.5), {"method": "blx", "blx_alpha": 1.2}, seed=3),
         Recipe("p4", "init_merge", (e0, e1, e2), (1.0, 1.0, 1.0), {"method": "ties"}, seed=4),
         Recipe("p5", "mutate_coeff", (e2, e0, e1, e2), (1.0, 0.1, -0.2, 0.05), {}, seed=5)],
        [Recipe("c1", "crossover", ("p1", "p2"), (0.6, 0.4), {"method": "linear"}, seed=6),
         Recipe("c2", "mutate", ("p3",), (), {"sigma": 0.05, "gene_mut_rate": 0.3}, seed=7),
         Recipe("c3", "crossover", ("p4", "p1"), (0.5, 0.5), {"method": "ties", "merge_params": {"density": 0.5}}, seed=8),
         Recipe("c4", "mutate_coeff", ("p2", e0, e1, e2), (1.0, 0.2, 0.0, -0.1), {}, seed=9)],
        [Recipe("d1", "crossover", ("c2", "c4"), (0.5, 0.5), {"method": "linear"}, seed=10),  # 5 to rebuild
         Recipe("d2", "mutate", ("c3",), (), {"sigma": 0.05, "gene_mut_rate": 0.3}, seed=11)],
    ]
    eager = dict(actor.experts)
    for batch in rounds:
        rows = actor.materialize_and_evaluate([r.to_dict() for r in batch])
        for r in batch:
            eager.update(materialize(r, {k: eager[k] for k in r.input_keys()}))
        want = actor.evaluator.evaluate_many([actor._as_candidate(eager[r.id]) for r in batch])
        assert [row.id for row in rows] == [r.id for r in batch]
        for row, w in zip(rows, want):
            assert row.fitness == w.fitness and row.per_task == w.per_task, row.id
    assert sorted(actor.lazy) == ["c1", "c2", "c4", "d2", "p1", "p2", "p3", "p5"]  # recipes only
    assert set(actor.store) - set(actor.experts) == {"p4", "c3", "d1"}  # TIES merges, a 5-step chain
    assert actor.keys() == sorted(eager) and actor.info()["n_keys"] == len(eager)
    got = actor.get_weights(sorted(eager))
    for k, td in eager.items():
        assert set(got[k]) == set(td) and all(torch.equal(torch.from_numpy(got[k][n]), t) for n, t in td.items()), k
    again = actor.evaluate_keys(["p1", "c1", "p3"])
    assert [r.fitness for r in again] == [r.fitness for r in actor.evaluator.evaluate_many(
        [actor._as_candidate(eager[k]) for k in ("p1", "c1", "p3")])]
    assert actor.drop(["p1", "c1", e0]) == 2 and "p1" not in actor.keys() and e0 in actor.keys()
    # p2 goes: c4 (its mutation) stays and gets its weights first; c3 goes: d2 gets them too
    assert actor.drop(["p2", "c3"]) == 2 and {"c4", "d2"} <= set(actor.store) and "p2" not in actor.keys()
    assert {"c2", "p3", "p5"} <= set(actor.lazy)
    got = actor.get_weights(["c4", "d2", "c2", "d1"])
    for k, td in got.items():
        assert all(torch.equal(torch.from_numpy(a), eager[k][n]) for n, a in td.items()), k


def test_scores_from_hidden_states_equal_the_whole_batch_logits(small_zoo, zoo_experts):
    """The output layer applied a row at a time to the captured hidden states (no batch of
    full-vocabulary logits) gives the scores of the whole-batch logits: LoRA candidates, stacked
    several per pass, and a full task vector that also changes the tied embedding (which must
    take the whole-batch path: scored with the base's output layer it would differ)."""
    from evomerge.evaluation import Evaluator

    ev = Evaluator.from_zoo(small_zoo, max_samples=24, batch_size=16, max_rows=48)
    assert ev._head is ev.model.get_output_embeddings()
    assert ev._head_keys == {"lm_head.weight", "model.embed_tokens.weight"}  # tied
    emb = ev.params["model.embed_tokens.weight"]
    full = {"model.embed_tokens.weight": 0.5 * torch.randn(emb.shape, generator=torch.Generator().manual_seed(0))}
    cands = [zoo_experts[t] for t in list(zoo_experts)[:4]] + [full]
    ev.logit_chunk = 1  # one row through the output layer at a time
    split = ev.evaluate_many(cands)
    head, ev._head = ev._head, None
    whole = ev.evaluate_many(cands)
    ev._head = head
    for a, b in zip(split, whole):
        for t in a.extra["metrics"]:
            for k, v in b.extra["metrics"][t].items():
                assert a.extra["metrics"][t][k] == pytest.approx(v, rel=1e-6, abs=1e-9), (t, k)
    # the embedding candidate really differs from the base (so a wrong path would show)
    assert whole[-1].extra["metrics"] != ev.evaluate_many([{}])[0].extra["metrics"]


def test_output_head_refuses_a_model_that_post_processes_its_logits(small_zoo):
    """A model whose logits are not exactly its output layer's (soft-capping, a logit scale; here
    a hook adding 1) keeps the whole-batch path."""
    from evomerge.evaluation import Evaluator
    from evomerge.evaluation.head import output_head

    ev = Evaluator.from_zoo(small_zoo, max_samples=8)
    probe = ev.data[ev.tasks[0]]["validation"].slice(0, 2)
    assert output_head(ev.model, ev.params, probe.input_ids, probe.attention_mask)[0] is ev._head

    def shift(module, args, out):
        out.logits = out.logits + 1.0
        return out

    hook = ev.model.register_forward_hook(shift)
    try:
        assert output_head(ev.model, ev.params, probe.input_ids, probe.attention_mask) == (None, frozenset())
    finally:
        hook.remove()
