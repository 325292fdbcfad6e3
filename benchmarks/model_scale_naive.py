"""``model_scale.py``'s ``naive`` phase: the save-reload-evaluate loop against ``Evaluator.evaluate_many``
on the same candidates, in the driver (no Ray)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch


def naive_phase(args, ws: dict) -> dict[str, Any]:
    """Save-reload-evaluate (peft) vs ``evaluate_many`` on the same experts, in this process."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from eval_throughput import naive_scores

    from evomerge.evaluation.task_data import load_task
    from evomerge.evaluation import Evaluator
    from evomerge.experts.peft_io import load_peft_adapter

    tasks = {t: load_task(d, ("validation", "test")) for t, d in ws["tasks"].items()}
    ev = Evaluator(ws["base"], tasks, device=args.device, batch_size=args.batch_size, max_samples=args.samples)
    cands = [load_peft_adapter(p).modules for p in ws["experts"][: args.naive]]
    _sync(args.device)
    ev.evaluate_many(cands)  # warm-up on the same candidates: the timed calls take the same path
    times = []
    for _ in range(args.naive_repeats):
        _sync(args.device)
        t0 = time.perf_counter()
        ours = ev.evaluate_many(cands)
        _sync(args.device)
        times.append(time.perf_counter() - t0)
    t_mem = sum(times) / len(times)
    n = len(cands)
    res = {"phase": "naive", "candidates": n, "in_memory_s": t_mem, "in_memory_s_each": times,
           "in_memory_per_s": n / t_mem, "loops": list(args.naive_loop)}
    diffs = []
    for loop in args.naive_loop:  # the first one listed is the target's reference
        t0 = time.perf_counter()
        naive = naive_scores(ws["base"], ev, cands, "validation", "token_accuracy", reload_base=loop == "reload")
        t_naive = time.perf_counter() - t0
        diffs += [abs(o.per_task[t] - s[t]) for o, s in zip(ours, naive) for t in s]
        key = "" if loop == args.naive_loop[0] else f"_{loop}"
        res.update({f"naive{key}_s": t_naive, f"naive{key}_per_s": n / t_naive, f"speedup{key}": t_naive / t_mem})
    res["max_score_diff"] = max(diffs)
    return res


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
