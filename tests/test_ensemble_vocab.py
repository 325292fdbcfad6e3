"""A model whose vocabulary is larger than its tokenizer's (embeddings padded past the last
token, as many released checkpoints are): ensembles and scores use the shared vocabulary, so
they equal those of the same model without the padding rows (they crashed: a generated id past
the tokenizer has no token to decode)."""

from __future__ import annotations

import pytest
import torch

from evomerge.evaluation import Evaluator

torch.set_num_threads(1)
TASK = "rev_digits"
EXTRA = 27


@pytest.fixture(scope="module")
def padded(small_zoo, tmp_path_factory):
    """(the zoo's evaluator, an evaluator of the zoo's base with EXTRA output rows, the share of
    answer positions where the padded model's own argmax is a row past the tokenizer)."""
    from transformers import AutoModelForCausalLM

    plain = Evaluator.from_zoo(small_zoo, tasks=[TASK], max_samples=16)
    model = AutoModelForCausalLM.from_pretrained(small_zoo.base_dir, dtype=torch.float32)
    n_tok = len(plain.tokenizer)
    data = plain.data[TASK]["validation"]
    with torch.no_grad():
        # a padding row pointing along the mean final hidden state wins the argmax almost everywhere
        h = model.model(input_ids=data.input_ids, attention_mask=data.attention_mask).last_hidden_state
        mean = h[data.attention_mask.bool()].mean(0)
        model.resize_token_embeddings(n_tok + EXTRA, mean_resizing=False)
        out = model.get_output_embeddings().weight
        out[n_tok:] = 0
        out[n_tok + 5] = 50 * mean / mean.norm() ** 2
        logits = model(input_ids=data.input_ids, attention_mask=data.attention_mask).logits
    answer = data.labels != -100
    wins = float((logits.argmax(-1)[answer] >= n_tok).float().mean())
    folder = tmp_path_factory.mktemp("padded_vocab")
    model.save_pretrained(folder)
    plain.tokenizer.save_pretrained(folder)
    ev = Evaluator(folder, small_zoo.load_tasks([TASK]), max_samples=16)
    return plain, ev, wins


def test_padded_model_really_prefers_rows_without_tokens(padded):
    plain, ev, wins = padded
    assert ev.model.get_output_embeddings().weight.shape[0] > len(ev.tokenizer) == len(plain.tokenizer)
    assert wins > 0.5  # the case that crashed: most greedy steps would emit an undecodable id


def test_ensemble_of_padded_model_equals_unpadded(padded, zoo_experts):
    plain, ev, _ = padded
    cands = [{}, zoo_experts[TASK], zoo_experts["brackets"]]
    got, want = ev.evaluate_ensemble(cands), plain.evaluate_ensemble(cands)
    assert got.per_task == want.per_task
    for k, row in want.extra["by_k"].items():
        assert got.extra["by_k"][k]["metrics"] == row["metrics"]
        assert got.extra["by_k"][k]["agreement"] == row["agreement"]


def test_scores_of_padded_model_equal_unpadded(padded, zoo_experts):
    plain, ev, _ = padded
    cands = [{}, zoo_experts[TASK]]
    for g, w in zip(ev.evaluate_many(cands), plain.evaluate_many(cands)):
        m, r = g.extra["metrics"][TASK], w.extra["metrics"][TASK]
        assert m["token_accuracy"] == r["token_accuracy"] and m["exact_match"] == r["exact_match"]
        assert m["cross_entropy"] == pytest.approx(r["cross_entropy"], rel=1e-5)
