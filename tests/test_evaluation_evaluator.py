"""The Evaluator: in-memory weight swapping against peft loading from disk, batched vs single,
candidate forms, PerTask, full task vectors, text metrics and bad input."""

from __future__ import annotations

import copy

import pytest
import torch

from evomerge.errors import ConfigError, DataError, ExpertLoadError
from evomerge.evaluation import Evaluator, PerTask
from evomerge.evaluation.candidates import to_deltas
from evomerge.evaluation.generate import greedy_generate
from evomerge.experts.peft_io import load_peft_adapter
from evomerge.experts.types import lora_deltas, lora_to_ab

torch.set_num_threads(1)
TASKS = ["rev_digits", "brackets"]
N = 40


@pytest.fixture(scope="module")
def ev(small_zoo):
    return Evaluator.from_zoo(small_zoo, tasks=TASKS, max_samples=N)


def _reference_scores(model, tok, ds):
    """Per-example scoring with no padding at all, plus greedy ``generate`` for exact match."""
    acc, em_tf, em_gen, ce = [], [], [], []
    for prompt, answer in zip(ds["prompt"], ds["answer"]):
        p = tok(prompt)["input_ids"]
        a = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([p + a])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0]
        pred = logits[len(p) - 1 : -1]
        target = torch.tensor(a)
        hit = pred.argmax(-1) == target
        acc.append(hit.double().mean().item())
        em_tf.append(float(hit.all()))
        ce.append(torch.nn.functional.cross_entropy(pred, target).item())
        with torch.no_grad():
            out = model.generate(input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                 max_new_tokens=len(a) + 3, do_sample=False, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)
        text = tok.decode(out[0, len(p):], skip_special_tokens=True)
        em_gen.append(float(text == answer))
    n = len(acc)
    return {"token_accuracy": sum(acc) / n, "exact_match": sum(em_tf) / n, "em_generate": sum(em_gen) / n,
            "cross_entropy": sum(ce) / n}


def test_in_memory_equals_peft_from_disk(small_zoo, ev):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(small_zoo.base_dir)
    base = AutoModelForCausalLM.from_pretrained(small_zoo.base_dir).eval()
    data = small_zoo.load_tasks(TASKS, splits=("validation",), limit=N)
    for task in TASKS:
        model = PeftModel.from_pretrained(copy.deepcopy(base), small_zoo.expert_dirs[task]).eval()
        got = ev.evaluate(load_peft_adapter(small_zoo.expert_dirs[task]).modules).extra["metrics"]
        for t in TASKS:
            want = _reference_scores(model, tok, data[t]["validation"])
            assert got[t]["token_accuracy"] == pytest.approx(want["token_accuracy"], abs=1e-12)
            assert got[t]["exact_match"] == pytest.approx(want["exact_match"], abs=1e-12)
            assert want["em_generate"] == pytest.approx(want["exact_match"], abs=1e-12)
            assert got[t]["cross_entropy"] == pytest.approx(want["cross_entropy"], rel=1e-4)
    plain = _reference_scores(base, tok, data["brackets"]["validation"])
    assert ev.evaluate({}).extra["metrics"]["brackets"]["token_accuracy"] == pytest.approx(plain["token_accuracy"], abs=1e-12)


@pytest.fixture(scope="module")
def ev_stacked(small_zoo):
    """Several candidates per forward pass (the GPU default), forced on CPU."""
    return Evaluator.from_zoo(small_zoo, tasks=TASKS, max_samples=N, batch_size=16, max_rows=64)


@pytest.mark.parametrize("stacked", [False, True])
def test_batched_equals_one_by_one(ev, ev_stacked, zoo_experts, stacked):
    cands = [{}] + [zoo_experts[t] for t in ("rev_digits", "brackets", "majority")]
    if stacked:
        assert ev_stacked._chunks(len(cands)) == 4
    many = (ev_stacked if stacked else ev).evaluate_many(cands)
    for c, r in zip(cands, many):
        one = ev.evaluate(c)
        for t in TASKS:
            for k, v in one.extra["metrics"][t].items():
                assert r.extra["metrics"][t][k] == pytest.approx(v, abs=1e-5), (t, k)
        assert r.fitness == pytest.approx(one.fitness, abs=1e-9)


def test_candidate_forms_agree(ev, zoo_experts):
    lora = zoo_experts["brackets"]
    a, b, c = ev.evaluate_many([lora, lora_deltas(lora), lora_to_ab(lora)])
    for r in (b, c):
        for t in TASKS:
            assert r.extra["metrics"][t]["token_accuracy"] == pytest.approx(a.extra["metrics"][t]["token_accuracy"], abs=1e-9)
            assert r.extra["metrics"][t]["cross_entropy"] == pytest.approx(a.extra["metrics"][t]["cross_entropy"], abs=1e-5)


def test_pooled_tasks_score_like_each_task_alone(small_zoo, ev, zoo_experts):
    """Rows of all tasks share length-sorted batches; each task's score must equal scoring
    that task by itself (its own evaluator), per metric."""
    cand = zoo_experts["rev_digits"]
    pooled = ev.evaluate(cand).extra["metrics"]
    for t in TASKS:
        alone = Evaluator.from_zoo(small_zoo, tasks=[t], max_samples=N, batch_size=7).evaluate(cand).extra["metrics"][t]
        for k, v in alone.items():
            assert pooled[t][k] == pytest.approx(v, abs=1e-5), (t, k)
    batch = ev._pooled("validation")
    assert sorted(batch.group.tolist()) == [0] * N + [1] * N
    assert batch.attention_mask.sum(1).tolist() == sorted(batch.attention_mask.sum(1).tolist())


def test_per_task_serves_each_task_its_own_candidate(ev, zoo_experts):
    own = PerTask({t: zoo_experts[t] for t in TASKS})
    r = ev.evaluate(own)
    for t in TASKS:
        assert r.per_task[t] == pytest.approx(ev.evaluate(zoo_experts[t]).per_task[t], abs=1e-9)
    with pytest.raises(ExpertLoadError, match="brackets"):
        ev.evaluate(PerTask({"rev_digits": zoo_experts["rev_digits"]}))


def test_full_task_vector_equals_saved_model(small_zoo, ev, tmp_path):
    """A delta on embeddings/norms (functional path) scores like a model saved with it applied."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    g = torch.Generator().manual_seed(3)
    delta = {
        "model.embed_tokens.weight": 0.05 * torch.randn(ev.params["model.embed_tokens.weight"].shape, generator=g),
        "model.norm.weight": 0.1 * torch.randn(ev.params["model.norm.weight"].shape, generator=g),
        "model.layers.0.mlp.up_proj.weight": 0.05 * torch.randn(ev.params["model.layers.0.mlp.up_proj.weight"].shape, generator=g),
    }
    model = AutoModelForCausalLM.from_pretrained(small_zoo.base_dir)
    with torch.no_grad():
        for k, v in delta.items():
            model.get_parameter(k).add_(v)
    model.save_pretrained(tmp_path / "m")
    AutoTokenizer.from_pretrained(small_zoo.base_dir).save_pretrained(tmp_path / "m")
    other = Evaluator(tmp_path / "m", small_zoo.load_tasks(TASKS, limit=N), max_samples=N)
    want = other.evaluate({})
    got, _ = ev.evaluate_many([delta, {}])
    for t in TASKS:
        assert got.extra["metrics"][t]["token_accuracy"] == pytest.approx(want.extra["metrics"][t]["token_accuracy"], abs=1e-9)
        assert got.extra["metrics"][t]["cross_entropy"] == pytest.approx(want.extra["metrics"][t]["cross_entropy"], rel=1e-5)
    assert got.fitness != ev.evaluate({}).fitness


def test_greedy_generation_matches_hf_generate(small_zoo, ev, zoo_experts):
    from transformers import AutoModelForCausalLM

    batch = ev.data["rev_digits"]["validation"].slice(0, 16)
    deltas = [{}, to_deltas(zoo_experts["rev_digits"], ev.params)]
    ours = greedy_generate(ev.model, ev.params, ev.linears, deltas, batch, ev.tokenizer)
    base = AutoModelForCausalLM.from_pretrained(small_zoo.base_dir).eval()
    tok = ev.tokenizer
    for i, prompt in enumerate(batch.prompts[:16]):
        p = tok(prompt)["input_ids"]
        out = base.generate(input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                            max_new_tokens=12, do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        want = tok.decode(out[0, len(p):], skip_special_tokens=True)
        assert "".join(ours[0][i]) == want[: len("".join(ours[0][i]))]
        assert "".join(ours[0][i]) == want or len(ours[0][i]) >= batch.labels[i].ne(-100).sum().item() + 3


def test_text_metrics(small_zoo, zoo_experts):
    ev = Evaluator.from_zoo(small_zoo, tasks=["brackets"], metric="token_f1", max_samples=N)
    base, expert = ev.evaluate_many([{}, zoo_experts["brackets"]])
    for r in (base, expert):
        m = r.extra["metrics"]["brackets"]
        # generation reproduces the reference exactly iff the teacher-forced argmax does
        assert m["token_f1"] >= m["exact_match"] - 1e-12 and m["rouge_l"] >= m["exact_match"] - 1e-12
        assert 0.0 <= m["bleu"] <= 1.0
        assert r.fitness == pytest.approx(m["token_f1"])
    assert expert.fitness > base.fitness
    # several candidates per pass and small batches (generation inside the stacked pass, then
    # the next batch): every metric as one candidate per pass
    stacked = Evaluator.from_zoo(small_zoo, tasks=["brackets"], metric="token_f1", max_samples=N, batch_size=8,
                                 max_rows=16)
    for a, b in zip((base, expert), stacked.evaluate_many([{}, zoo_experts["brackets"]])):
        for k, v in a.extra["metrics"]["brackets"].items():
            assert b.extra["metrics"]["brackets"][k] == pytest.approx(v, abs=1e-5), k


def test_bad_candidates_name_the_key(ev, zoo_experts):
    with pytest.raises(ExpertLoadError, match="model.layers.9.self_attn.q_proj.weight"):
        ev.evaluate({"model.layers.9.self_attn.q_proj.weight": torch.zeros(3, 3)})
    key = "model.layers.0.self_attn.q_proj.weight"
    with pytest.raises(ExpertLoadError, match=r"q_proj.weight.*shape \(3, 3\)"):
        ev.evaluate({key: torch.zeros(3, 3)})
    with pytest.raises(ExpertLoadError, match="NaN"):
        ev.evaluate({key: torch.full(ev.params[key].shape, float("nan"))})
    with pytest.raises(DataError, match="split `train`"):
        ev.evaluate({}, split="train")


def test_bad_tasks_and_options(small_zoo):
    import datasets

    good = datasets.Dataset.from_dict({"prompt": ["<brackets>((="], "answer": ["))"]})
    with pytest.raises(DataError, match="missing column"):
        Evaluator(small_zoo.base_dir, {"t": {"validation": datasets.Dataset.from_dict({"prompt": ["x"]})}})
    with pytest.raises(DataError, match="empty"):
        Evaluator(small_zoo.base_dir, {"t": {"validation": good.select([])}})
    with pytest.raises(ConfigError, match="metric"):
        Evaluator(small_zoo.base_dir, {"t": {"validation": good}}, metric="accuracy")
    with pytest.raises(ExpertLoadError, match="config.json"):
        Evaluator(small_zoo.root, {"t": {"validation": good}})
    ev = Evaluator(small_zoo.base_dir, {"t": {"validation": good}}, task_weights={"t": 2.0})
    assert 0.0 <= ev.evaluate({}).fitness <= 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_scores_match_cpu(small_zoo, ev, zoo_experts):
    """On CUDA (several candidates stacked per pass, the GPU default) the scores are the CPU
    scores: per-token metrics to float tolerance, exact match to at most one flipped near-tie."""
    gpu = Evaluator.from_zoo(small_zoo, tasks=TASKS, max_samples=N, device="cuda")
    assert gpu.max_rows > gpu.batch_size
    cands = [{}] + [zoo_experts[t] for t in ("rev_digits", "brackets", "majority")]
    cands.append(lora_deltas(zoo_experts["brackets"]))
    for c, r in zip(cands, gpu.evaluate_many(cands)):
        want = ev.evaluate(c).extra["metrics"]
        for t in TASKS:
            got = r.extra["metrics"][t]
            assert got["token_accuracy"] == pytest.approx(want[t]["token_accuracy"], abs=1.0 / N)
            assert got["exact_match"] == pytest.approx(want[t]["exact_match"], abs=1.0 / N)
            assert got["cross_entropy"] == pytest.approx(want[t]["cross_entropy"], rel=1e-3)
    one = gpu.evaluate(cands[2])
    assert one.fitness == pytest.approx(gpu.evaluate_many(cands)[2].fitness, abs=1e-9)
