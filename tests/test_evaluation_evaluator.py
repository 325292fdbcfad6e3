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


def _reference_rows(model, tok, ds):
    """Per-example token accuracy, exact match and cross-entropy, one unpadded example at a time."""
    out = {"token_accuracy": [], "exact_match": [], "cross_entropy": []}
    for prompt, answer in zip(ds["prompt"], ds["answer"]):
        p = tok(prompt)["input_ids"]
        a = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():
            pred = model(input_ids=torch.tensor([p + a])).logits[0, len(p) - 1 : -1]
        hit = pred.argmax(-1) == torch.tensor(a)
        out["token_accuracy"].append(hit.double().mean().item())
        out["exact_match"].append(float(hit.all()))
        out["cross_entropy"].append(torch.nn.functional.cross_entropy(pred, torch.tensor(a)).item())
    return out


@pytest.mark.parametrize("stacked", [False, True])
def test_per_example_values_in_split_order(small_zoo, ev, ev_stacked, zoo_experts, stacked):
    """``per_example``: the same scores bit for bit; per task, one value per example in the split
    file's row order (each example scored alone, unpadded, by the HF model), whose mean is the
    task's score."""
    import numpy as np
    from transformers import AutoModelForCausalLM

    e = ev_stacked if stacked else ev
    cands = [{}, zoo_experts["rev_digits"]]
    plain = e.evaluate_many(cands)
    rows = e.evaluate_many(cands, per_example=True)
    base = AutoModelForCausalLM.from_pretrained(small_zoo.base_dir).eval()
    data = small_zoo.load_tasks(TASKS, splits=("validation",), limit=N)
    for a, b in zip(plain, rows):
        assert a.per_task == b.per_task and a.fitness == b.fitness and a.extra["metrics"] == b.extra["metrics"]
        assert "examples" not in a.extra and set(b.extra["examples"]) == set(TASKS)
        for t in TASKS:
            for key, values in b.extra["examples"][t].items():
                assert values.dtype == np.float64 and values.shape == (N,)
                assert abs(values.mean() - b.extra["metrics"][t][key]) <= 1e-12, (t, key)
    for t in TASKS:  # the base candidate against the model itself, example by example
        want = _reference_rows(base, e.tokenizer, data[t]["validation"])
        got = rows[0].extra["examples"][t]
        assert got["token_accuracy"].tolist() == want["token_accuracy"]
        assert got["exact_match"].tolist() == want["exact_match"]
        np.testing.assert_allclose(got["cross_entropy"], want["cross_entropy"], rtol=1e-4)
        np.testing.assert_array_equal(got["neg_cross_entropy"], -got["cross_entropy"])


def test_per_example_follows_the_file_order_and_per_task_candidates(small_zoo, ev, zoo_experts):
    """A reversed split gives the same values reversed; a ``PerTask`` candidate (scored task by
    task) gives each task its own candidate's values; task weights change only the fitness."""
    import numpy as np

    data = small_zoo.load_tasks(TASKS, splits=("validation",), limit=N)
    rev = {t: {"validation": d["validation"].select(range(N - 1, -1, -1))} for t, d in data.items()}
    weighted = Evaluator(small_zoo.base_dir, rev, max_samples=N, task_weights={"brackets": 3.0})
    cand = zoo_experts["brackets"]
    fwd = ev.evaluate_many([cand], per_example=True)[0].extra["examples"]
    back = weighted.evaluate_many([cand], per_example=True)[0]
    for t in TASKS:
        assert back.extra["examples"][t]["exact_match"].tolist() == fwd[t]["exact_match"][::-1].tolist()
        np.testing.assert_allclose(back.extra["examples"][t]["cross_entropy"], fwd[t]["cross_entropy"][::-1], atol=1e-5)
        assert abs(back.extra["examples"][t]["token_accuracy"].mean() - back.per_task[t]) <= 1e-12
    own = ev.evaluate_many([PerTask({t: zoo_experts[t] for t in TASKS})], per_example=True)[0]
    for t in TASKS:
        alone = ev.evaluate_many([zoo_experts[t]], per_example=True)[0].extra["examples"][t]
        assert own.extra["examples"][t]["exact_match"].tolist() == alone["exact_match"].tolist()
        np.testing.assert_allclose(own.extra["examples"][t]["cross_entropy"], alone["cross_entropy"], atol=1e-5)
        for key, values in own.extra["examples"][t].items():
            assert abs(values.mean() - own.extra["metrics"][t][key]) <= 1e-12, (t, key)


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
    for a, b in zip((base, expert), stacked.evaluate_many([{}, zoo_experts["brackets"]], per_example=True)):
        for k, v in a.extra["metrics"]["brackets"].items():
            assert b.extra["metrics"]["brackets"][k] == pytest.approx(v, abs=1e-5), k
            # per example too, generated metrics included: their mean is the task's score
            assert abs(b.extra["examples"]["brackets"][k].mean() - b.extra["metrics"]["brackets"][k]) <= 1e-12, k


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
