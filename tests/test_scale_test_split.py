"""The scale run's cell workers score test on every row of the test split; validation (what
every choice of the run reads) keeps the first ``evaluation.max_samples`` rows."""

from __future__ import annotations

import pytest

from evomerge.config import config_from_dict

MAX_SAMPLES = 24


@pytest.fixture(scope="module")
def worker(small_zoo, tmp_path_factory):
    from evomerge.pipelines.scale.driver import make_context, pool_spec
    from evomerge.pipelines.scale.work import CellWorker

    cfg = config_from_dict({"evaluation": {"max_samples": MAX_SAMPLES, "batch_size": 16}})
    return CellWorker(make_context(cfg, pool_spec(cfg, small_zoo), tmp_path_factory.mktemp("run")))


def _evaluator(zoo, split: str, rows: range):
    """An independent evaluator over rows ``rows`` of one split of every task."""
    from evomerge.evaluation import Evaluator

    data = {t: {split: d[split].select(rows)} for t, d in zoo.load_tasks(splits=(split,)).items()}
    return Evaluator(zoo.base_dir, data, batch_size=16, max_samples=None)


def test_test_split_is_scored_on_every_row(small_zoo, worker):
    n = len(small_zoo.load_tasks(splits=("test",))[small_zoo.tasks[0]]["test"])
    assert n > MAX_SAMPLES
    assert all(len(worker.evaluator.data[t]["test"]) == n for t in worker.tasks)
    cand = worker.expert_vector(1)
    got = worker.evaluate(cand, "test")
    # the whole split's mean = the row-weighted mean of two evaluators over disjoint row ranges
    cut = 70
    head, tail = (_evaluator(small_zoo, "test", r).evaluate(cand, "test") for r in (range(cut), range(cut, n)))
    first = _evaluator(small_zoo, "test", range(MAX_SAMPLES)).evaluate(cand, "test")
    for t in worker.tasks:
        want = (cut * head.per_task[t] + (n - cut) * tail.per_task[t]) / n
        assert got[t][0] == pytest.approx(want, abs=1e-9), t
        ce = head.extra["metrics"][t]["cross_entropy"], tail.extra["metrics"][t]["cross_entropy"]
        assert got[t][1] == pytest.approx((cut * ce[0] + (n - cut) * ce[1]) / n, rel=1e-5), t
    # the old measurement (the first max_samples rows) differs on some task
    assert any(abs(got[t][0] - first.per_task[t]) > 1e-6 for t in worker.tasks)


def test_validation_keeps_the_first_max_samples_rows(small_zoo, worker):
    assert all(len(worker.evaluator.data[t]["validation"]) == MAX_SAMPLES for t in worker.tasks)
    cand = worker.expert_vector(2)
    got = worker.evaluate(cand, "validation")
    want = _evaluator(small_zoo, "validation", range(MAX_SAMPLES)).evaluate(cand, "validation")
    for t in worker.tasks:
        assert got[t][0] == pytest.approx(want.per_task[t], abs=1e-9), t
