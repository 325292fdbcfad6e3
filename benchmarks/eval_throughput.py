"""Candidates/second of the in-memory Evaluator vs the naive loop, same candidates and data.

Naive loop, per candidate: save the adapter to disk, ``PeftModel.from_pretrained`` on a copy
of the base, run it over every task batch and score. In-memory (deltas swapped into the live
base, all tasks' rows pooled into length-sorted batches): the one-by-one ``Evaluator.evaluate``
loop, ``Evaluator.evaluate_many`` with the device's default rows per pass (CPU: one candidate
per pass) and with ``--rows-per-pass`` rows (several candidates stacked in one pass, the GPU
default). Scores of all paths are printed side by side. A last row times the base model alone
(no weights to apply) over the same rows: the forward passes every exact path must run, so its
ratio is the ceiling for any in-memory design on that device.

    python benchmarks/eval_throughput.py [--zoo DIR] [--candidates 12] [--samples 64] [--threads 1]
        [--metric exact_match|token_accuracy]

exact_match is GENOME's fitness: the naive loop generates answers; the Evaluator gets the same
numbers from one teacher-forced pass (greedy decoding reproduces the reference iff every
reference token is the argmax given the reference prefix).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch


def _candidates(experts: list[dict], n: int, seed: int) -> list[dict]:
    """``n`` LoRA candidates: the experts, then random rescalings of them (all peft-saveable)."""
    from evomerge.experts.types import LoraModule

    g = torch.Generator().manual_seed(seed)
    out = list(experts[:n])
    while len(out) < n:
        e = experts[int(torch.randint(len(experts), (1,), generator=g))]
        s = float(0.5 + torch.rand(1, generator=g))
        out.append({k: LoraModule(m.A, m.B, m.scale * s, m.fan_in_fan_out) for k, m in e.items()})
    return out


def naive_scores(base_dir: Path, ev, candidates: list[dict], split: str, metric: str,
                 reload_base: bool = False) -> list[dict[str, float]]:
    """The loop the Evaluator replaces: save, load with peft, evaluate. ``reload_base``: the
    base is read from disk for every candidate (a user's loop of one load per candidate)
    instead of deep-copied from one loaded copy.

    exact_match: answers generated with ``model.generate`` (greedy, left-padded batches) and
    compared as strings; token_accuracy: one teacher-forced pass per batch.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from evomerge.evaluation.metrics import teacher_forced
    from evomerge.experts.peft_io import save_peft_adapter

    tok = ev.tokenizer
    device = ev.device
    def load():
        return AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True).to(device).eval()

    base = None if reload_base else load()
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, cand in enumerate(candidates):
            path = save_peft_adapter(cand, Path(tmp) / f"c{i}")
            fresh = load() if reload_base else copy.deepcopy(base)
            model = PeftModel.from_pretrained(fresh, path, torch_device=str(device)).eval()
            scores = {}
            with torch.inference_mode():
                for task in ev.tasks:
                    data = ev.data[task][split]
                    total = 0.0
                    for start in range(0, len(data), ev.batch_size):
                        b = data.slice(start, start + ev.batch_size)
                        if metric == "token_accuracy":
                            logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
                            total += float(teacher_forced(logits, b.labels)["token_accuracy"].sum())
                            continue
                        tok.padding_side = "left"
                        enc = tok(b.prompts, return_tensors="pt", padding=True).to(device)
                        longest = max(len(tok(a, add_special_tokens=False)["input_ids"]) for a in b.answers)
                        gen = model.generate(**enc, max_new_tokens=longest + 1, do_sample=False,
                                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
                        texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                        total += sum(float(t == a) for t, a in zip(texts, b.answers))
                    scores[task] = total / len(data)
            out.append(scores)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, default=None, help="zoo folder (default: the cached small zoo)")
    ap.add_argument("--candidates", type=int, default=12)
    ap.add_argument("--samples", type=int, default=64, help="validation examples per task")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--metric", default="exact_match", choices=["exact_match", "token_accuracy"])
    ap.add_argument("--rows-per-pass", type=int, default=1024, help="rows per pass of the stacked path")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from evomerge.evaluation import Evaluator
    from evomerge.experts.peft_io import load_peft_adapter
    from evomerge.zoo import Zoo, ensure_zoo

    zoo = Zoo.open(args.zoo) if args.zoo else ensure_zoo("small")
    ev = Evaluator.from_zoo(zoo, max_samples=args.samples, device=args.device, metric=args.metric)
    experts = [load_peft_adapter(d).modules for d in zoo.expert_dirs.values()]
    cands = _candidates(experts, args.candidates, seed=0)
    ev.evaluate_many(cands[:2])  # warm-up
    default_rows = ev.max_rows

    t = time.perf_counter()
    batched = ev.evaluate_many(cands)
    t_batched = time.perf_counter() - t
    t = time.perf_counter()
    single = [ev.evaluate(c) for c in cands]
    t_single = time.perf_counter() - t
    ev.max_rows = max(args.rows_per_pass, ev.batch_size)
    ev.evaluate_many(cands[:2])
    t = time.perf_counter()
    stacked = ev.evaluate_many(cands)
    t_stacked = time.perf_counter() - t
    ev.max_rows = default_rows
    t = time.perf_counter()
    ev.evaluate_many([{}] * len(cands))  # the base model alone: the forward passes any exact path must run
    t_floor = time.perf_counter() - t
    t = time.perf_counter()
    naive = naive_scores(zoo.base_dir, ev, cands, "validation", args.metric)
    t_naive = time.perf_counter() - t

    n = len(cands)
    diff_b = max(abs(b.per_task[k] - s[k]) for b, s in zip(batched, naive) for k in s)
    diff_s = max(abs(b.per_task[k] - s[k]) for b, s in zip(single, naive) for k in s)
    diff_st = max(abs(b.per_task[k] - s[k]) for b, s in zip(stacked, naive) for k in s)
    print(f"zoo {zoo.root} ({zoo.profile}), {n} candidates x {len(ev.tasks)} tasks x {args.samples} samples, "
          f"{args.threads} thread(s), device {args.device}, metric {args.metric}")
    print(f"{'path':48s} {'seconds':>8s} {'cand/s':>8s} {'vs naive':>9s}")
    for name, sec in (("naive: save + PeftModel.from_pretrained", t_naive),
                      ("in-memory, one by one (evaluate)", t_single),
                      (f"in-memory, evaluate_many ({default_rows} rows/pass)", t_batched),
                      (f"in-memory, evaluate_many ({max(args.rows_per_pass, ev.batch_size)} rows/pass)", t_stacked),
                      ("floor: base model only, nothing to apply", t_floor)):
        print(f"{name:48s} {sec:8.2f} {n / sec:8.2f} {t_naive / sec:8.1f}x")
    print("the floor's ratio bounds what any exact evaluation of these candidates can reach against the naive loop")
    print(f"max |{args.metric} difference| vs naive: one by one {diff_s:.2e}, evaluate_many {diff_b:.2e}, "
          f"stacked {diff_st:.2e}")
    print("candidate  " + " ".join(f"{t[:10]:>10s}" for t in ev.tasks))
    for i in range(min(n, 4)):
        print(f"{i:<3d} naive   " + " ".join(f"{naive[i][t]:10.4f}" for t in ev.tasks))
        print(f"{i:<3d} batched " + " ".join(f"{batched[i].per_task[t]:10.4f}" for t in ev.tasks))


if __name__ == "__main__":
    main()
