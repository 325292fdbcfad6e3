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


def test_test_split_scored_on_every_row_and_the_old_rows_on_request(small_zoo):
    """``--test-rows``: the default scores every test row of each task; at ``max_samples`` rows it is
    the search's own evaluator (the measurement before the fifth session); ``tests`` names the
    further row counts ``test@N``. Per task, the whole split's mean is the row-weighted mean of the
    first ``max_samples`` rows' and the rest's (scored by an independent evaluator over those rows)."""
    from evomerge.evaluation.evaluator import Evaluator

    base = {"evaluation": {"metric": "token_accuracy", "max_samples": 8, "batch_size": 64}}
    bench = search_vs_merge.Bench(small_zoo, base)
    tasks = tuple(small_zoo.tasks[:2])
    full = small_zoo.load_tasks(list(tasks), splits=("test",))
    n = {t: len(full[t]["test"]) for t in tasks}
    whole = bench.test_evaluator(tasks, None)
    assert all(len(whole.data[t]["test"]) == n[t] > 8 for t in tasks)
    assert bench.test_evaluator(tasks, 8) is bench.evaluator(tasks)
    assert all(len(bench.test_evaluator(tasks, 5).data[t]["test"]) == 5 for t in tasks)
    tv = bench.pool.task_vector(0)
    rest_data = {t: {"test": full[t]["test"].select(range(8, n[t]))} for t in tasks}
    rest = Evaluator(small_zoo.base_dir, rest_data, max_samples=None).evaluate(tv, "test").per_task
    first = bench.evaluator(tasks).evaluate(tv, "test").per_task
    all_rows = whole.evaluate(tv, "test").per_task
    for t in tasks:
        assert abs(all_rows[t] * n[t] - (first[t] * 8 + rest[t] * (n[t] - 8))) < 1e-9
    bench.test_rows = [None, 8]
    (got,) = bench.tests(tasks, [tv])
    assert got == {"test": statistics.fmean(all_rows.values()), "test@8": statistics.fmean(first.values())}


def test_test_rows_option_and_summary_of_the_extra_split():
    import argparse

    import pytest

    assert search_vs_merge._rows("all") is None and search_vs_merge._rows("64") == 64
    for bad in ("0", "-3", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match="--test-rows"):
            search_vs_merge._rows(bad)
    rows = [{"k": 2, "seed": s, "method": "ta_best", "target": "all", "validation": 0.5, "test": t, "test@64": u}
            for s, (t, u) in enumerate([(0.6, 0.7), (0.4, 0.2)])]
    out = {r["split"]: r for r in search_vs_merge.summarise(rows)}
    assert out["test@64"]["mean"] == statistics.fmean([0.7, 0.2])
    assert out["test"]["mean"] == statistics.fmean([0.6, 0.4])
