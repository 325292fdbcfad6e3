"""What docs/zoo.md says of the evaluation and the zoos holds, measured:

* ``token_accuracy`` and ``neg_cross_entropy`` of a task are means over its examples of each
  example's value over its answer tokens and the closing EOS (not pooled over all tokens),
  recomputed here with transformers alone on the small zoo's base;
* full fine-tunes come with the ``default`` and ``small`` profiles, not with ``tiny``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

DOC = (Path(__file__).resolve().parents[1] / "docs" / "zoo.md").read_text()


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_teacher_forced_metrics_are_means_of_per_example_values(small_zoo, tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.evaluation import Evaluator
    from evomerge.evaluation.task_data import load_examples

    rows = pq.read_table(small_zoo.task_files("brackets")["validation"]).to_pylist()[:12]
    assert len({len(r["answer"]) for r in rows}) > 1  # answers of several lengths: pooling would differ
    task = tmp_path / "t.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = Evaluator(small_zoo.base_dir, {"t": {"validation": load_examples(task)}}, max_samples=None,
                    batch_size=5).evaluate({}).extra["metrics"]["t"]

    tok = AutoTokenizer.from_pretrained(str(small_zoo.base_dir))
    model = AutoModelForCausalLM.from_pretrained(str(small_zoo.base_dir), dtype=torch.float32).eval()
    acc, ce, hits, nll, n = [], [], 0, 0.0, 0
    for r in rows:  # one example at a time, no padding
        p = tok(r["prompt"], add_special_tokens=True)["input_ids"]
        target = tok(r["answer"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([p + target])).logits[0, len(p) - 1 : -1].double(), -1)
        right = logp.argmax(-1) == torch.tensor(target)
        loss = -logp.gather(-1, torch.tensor(target)[:, None])[:, 0]
        acc.append(float(right.double().mean()))
        ce.append(float(loss.mean()))
        hits, nll, n = hits + int(right.sum()), nll + float(loss.sum()), n + len(target)
    assert got["token_accuracy"] == pytest.approx(sum(acc) / len(acc), abs=1e-9)
    assert got["neg_cross_entropy"] == pytest.approx(-sum(ce) / len(ce), rel=1e-4)
    assert abs(got["token_accuracy"] - hits / n) > 1e-3 and abs(got["neg_cross_entropy"] + nll / n) > 1e-3  # not pooled
    assert ("Token accuracy and cross-entropy are means of per-example values, not pooled over tokens: an example's token accuracy is the share "
            "of its scored positions (the answer's tokens and the closing EOS)") in _flat(DOC)


def test_which_profiles_have_full_finetunes() -> None:
    from evomerge.zoo.model import PROFILES

    with_full = sorted(name for name, prof in PROFILES.items() if prof.full_steps > 0)
    assert with_full == ["default", "small"]
    doc = _flat(DOC)
    assert "one LoRA expert and (in the `default` and `small` zoos, both shipped) one full fine-tune" in doc
    assert "The `tiny` profile, which builds in seconds (the example below), has LoRA experts only: no `full/` folder." in doc
    assert "one LoRA expert and one full fine-tune" not in doc  # what the page said of every zoo
