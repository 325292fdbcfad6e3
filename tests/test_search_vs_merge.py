"""``benchmarks/search_vs_merge.py``: the summary's optional ``holdout`` split (``--holdout``) and the
held-out evaluator, which scores exactly the validation rows past ``max_samples`` (the rows a
search never sees)."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import search_vs_merge  # noqa: E402


def test_summary_holdout_split_only_where_every_seed_has_it():
    rows = [
        {"k": 2, "seed": s, "method": "ta_best", "target": "union", "validation": v, "test": t, "holdout": h}
        for s, (v, t, h) in enumerate([(0.8, 0.7, 0.75), (0.6, 0.5, 0.55), (0.7, 0.9, 0.65)])
    ] + [
        {"k": 2, "seed": 0, "method": "ties", "target": "union", "validation": 0.5, "test": 0.4},
        {"k": 2, "seed": 1, "method": "ties", "target": "union", "validation": 0.3, "test": 0.2, "holdout": 0.1},
    ]
    out = {(r["method"], r["split"]): r for r in search_vs_merge.summarise(rows)}
    assert out[("ta_best", "holdout")]["mean"] == statistics.fmean([0.75, 0.55, 0.65])
    assert out[("ta_best", "holdout")]["sd"] == statistics.stdev([0.75, 0.55, 0.65])
    assert out[("ta_best", "test")]["mean"] == statistics.fmean([0.7, 0.5, 0.9])
    assert ("ties", "holdout") not in out  # one seed lacks it: no mean over a subset
    assert out[("ties", "validation")]["mean"] == statistics.fmean([0.5, 0.3])


def test_holdout_evaluator_scores_the_rows_past_max_samples(small_zoo):
    from evomerge.evaluation.evaluator import Evaluator

    base = {"evaluation": {"metric": "token_accuracy", "max_samples": 8, "batch_size": 64}}
    bench = search_vs_merge.Bench(small_zoo, base)
    tasks = tuple(small_zoo.tasks[:2])
    held = bench.holdout(tasks)
    full = small_zoo.load_tasks(list(tasks), splits=("validation",))
    n = {t: len(full[t]["validation"]) for t in tasks}
    assert all(len(held.data[t]["validation"]) == n[t] - 8 > 0 for t in tasks)
    # per task, the whole validation set's mean = (first 8 rows' mean * 8 + held-out mean * (n - 8)) / n
    tv = bench.pool.task_vector(0)
    first = bench.evaluator(tasks).evaluate(tv, "validation").per_task
    whole = Evaluator.from_zoo(small_zoo, tasks=list(tasks), max_samples=None).evaluate(tv, "validation").per_task
    rest = held.evaluate(tv, "validation").per_task
    for t in tasks:
        assert abs(whole[t] * n[t] - (first[t] * 8 + rest[t] * (n[t] - 8))) < 1e-9
    assert bench.held(tasks, [tv])[0] == statistics.fmean(rest.values())
