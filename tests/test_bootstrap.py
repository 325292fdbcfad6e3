"""The paired, task-stratified bootstrap over evaluation examples (evomerge.evaluation.bootstrap),
against independent computations: the analytic standard error of a stratified mean of
Bernoulli examples, Monte-Carlo coverage, exact pairing, and the share of replicates won."""

from __future__ import annotations

import numpy as np
import pytest

from evomerge.evaluation.bootstrap import (
    best_share,
    bootstrap_points,
    paired_difference,
    paired_se,
    percentile_interval,
    resample_counts,
    within_noise,
)

TASKS = [f"t{i}" for i in range(5)]


def _one_cell(examples: dict[str, np.ndarray], **kw):
    """A single cell that is a single point: the stratified mean over all tasks."""
    ex = {t: v[None, :] for t, v in examples.items()}
    return bootstrap_points(ex, np.ones((1, len(ex)), bool), np.ones((1, 1)), **kw)


def test_se_of_a_stratified_bernoulli_mean_matches_the_analytic_value():
    rng = np.random.default_rng(1)
    p = [0.2, 0.5, 0.7, 0.9, 0.4]
    n = [64, 100, 64, 200, 80]
    ex = {t: (rng.random(nt) < pt).astype(float) for t, pt, nt in zip(TASKS, p, n)}
    rep = _one_cell(ex, replicates=4000, seed=3)
    # plug-in variance of each task's mean: p_hat (1 - p_hat) / n_t; the target is their mean over T tasks
    ph = np.array([ex[t].mean() for t in TASKS])
    analytic = np.sqrt(np.sum(ph * (1 - ph) / np.array(n))) / len(TASKS)
    assert rep.value[0] == pytest.approx(ph.mean(), abs=1e-12)
    assert rep.boot[:, 0].std() == pytest.approx(analytic, rel=0.10)


def test_interval_covers_the_true_mean_in_about_95_percent_of_evaluation_sets():
    rng = np.random.default_rng(7)
    p = np.array([0.3, 0.55, 0.8, 0.45, 0.65])
    truth = p.mean()
    hits, sets = 0, 250
    for s in range(sets):
        ex = {t: (rng.random(64) < pt).astype(float) for t, pt in zip(TASKS, p)}
        lo, hi = percentile_interval(_one_cell(ex, replicates=1000, seed=s).boot[:, 0])
        hits += bool(lo[()] <= truth <= hi[()])
    assert 0.90 <= hits / sets <= 0.98


def test_paired_difference_of_identical_cells_is_exactly_zero_and_of_a_shift_the_shift():
    rng = np.random.default_rng(2)
    base = {t: rng.random((1, 64)) for t in TASKS}
    # cells: 0 and 2 identical, 1 = cell 0 + 0.125 on every example, 3 an unrelated cell
    ex = {t: np.vstack([v, v + 0.125, v, rng.random((1, 64))]) for t, v in base.items()}
    rep = bootstrap_points(ex, np.ones((4, len(TASKS)), bool), np.eye(4), replicates=500, seed=0)
    assert paired_difference(rep, 0, 2) == (0.0, 0.0, 0.0)
    d, lo, hi = paired_difference(rep, 1, 0)
    assert d == pytest.approx(0.125, abs=1e-12) and lo == pytest.approx(0.125, abs=1e-12)
    assert hi == pytest.approx(0.125, abs=1e-12)
    # the unrelated cell is not paired away: its difference has a real spread
    d, lo, hi = paired_difference(rep, 3, 0)
    assert hi - lo > 0.02


def test_pairing_narrows_the_difference_of_correlated_cells():
    # two cells that share most of their per-example noise: the paired interval is far narrower than
    # the one of independently redrawn examples (sum of the two variances)
    rng = np.random.default_rng(4)
    common = {t: rng.random(100) for t in TASKS}
    ex = {t: np.vstack([c, c + 0.02 * rng.standard_normal(100)]) for t, c in common.items()}
    rep = bootstrap_points(ex, np.ones((2, len(TASKS)), bool), np.eye(2), replicates=1000, seed=1)
    _, lo, hi = paired_difference(rep, 1, 0)
    unpaired = 2 * 1.96 * np.sqrt(rep.boot[:, 0].var() + rep.boot[:, 1].var())
    assert hi - lo < 0.2 * unpaired


def test_targets_and_seed_means_aggregate_as_the_scale_tables():
    rng = np.random.default_rng(5)
    ex = {t: rng.random((3, 40)) for t in TASKS}
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 0, 0, 0]], bool)  # cell 0: all; 1, 2: union of two tasks
    points = np.array([[1, 0, 0], [0, 1, 1]])  # point 1: mean over two seeds' cells
    rep = bootstrap_points(ex, mask, points, replicates=200, seed=9)
    task_means = np.array([[ex[t][c].mean() for t in TASKS] for c in range(3)])
    assert rep.value[0] == pytest.approx(task_means[0].mean(), abs=1e-12)
    assert rep.value[1] == pytest.approx((task_means[1, :2].mean() + task_means[2, :2].mean()) / 2, abs=1e-12)
    # replicate 0 by hand from the counts the same seed draws
    counts = resample_counts({t: 40 for t in TASKS}, replicates=200, seed=9)
    redrawn = np.array([[(counts[t][0] * ex[t][c]).sum() / 40 for t in TASKS] for c in range(3)])
    assert rep.boot[0, 0] == pytest.approx(redrawn[0].mean(), abs=1e-12)
    assert rep.boot[0, 1] == pytest.approx((redrawn[1, :2].mean() + redrawn[2, :2].mean()) / 2, abs=1e-12)
    # task weights: a weighted mean over the tasks
    w = [2.0, 1.0, 0.0, 0.0, 1.0]
    rep_w = bootstrap_points(ex, mask, points, replicates=200, seed=9, task_weights=w)
    assert rep_w.value[0] == pytest.approx(np.dot(w, task_means[0]) / 4, abs=1e-12)


def test_counts_redraw_each_task_with_replacement_and_reproduce():
    a = resample_counts({"x": 64, "y": 200}, replicates=300, seed=11, stream=("validation",))
    b = resample_counts({"y": 200}, replicates=300, seed=11, stream=("validation",))
    assert (a["x"].sum(axis=1) == 64).all() and (a["y"].sum(axis=1) == 200).all()
    assert np.array_equal(a["y"], b["y"])  # a task's redraws do not depend on the other tasks
    c = resample_counts({"y": 200}, replicates=300, seed=11, stream=("test",))
    assert not np.array_equal(a["y"], c["y"])
    # with replacement: about 1 - 1/e of the rows drawn at least once
    assert (a["y"] > 0).mean() == pytest.approx(1 - np.exp(-1), abs=0.01)


def test_p_best_is_one_for_a_separated_peak_and_splits_between_equal_k():
    rng = np.random.default_rng(6)
    n = 64
    low = {t: (rng.random(n) < 0.3).astype(float) for t in TASKS}
    high = {t: (rng.random(n) < 0.8).astype(float) for t in TASKS}
    other = {t: (rng.random(n) < 0.3).astype(float) for t in TASKS}
    ex = {t: np.vstack([low[t], high[t], low[t], other[t]]) for t in TASKS}
    rep = bootstrap_points(ex, np.ones((4, len(TASKS)), bool), np.eye(4), replicates=1000, seed=2)
    share = best_share(rep.boot[:, :3])  # curve k = 1, 2, 3 with a clear peak at 2
    assert share[1] == pytest.approx(1.0) and share.sum() == pytest.approx(1.0)
    assert within_noise(rep, [0, 1, 2], 1).tolist() == [False, True, False]
    # identical data at two k: every replicate ties, each k gets half
    eq = best_share(rep.boot[:, [0, 2]])
    assert eq.tolist() == [0.5, 0.5]
    # two k with the same true rate but different examples: the share splits
    split = best_share(rep.boot[:, [0, 3]])
    assert 0.05 < split[0] < 0.95 and split.sum() == pytest.approx(1.0)
    assert within_noise(rep, [0, 3], 0).all()
    # lower is better (cross-entropy): the low curve point wins
    assert best_share(rep.boot[:, :2], lower_is_better=True)[0] == pytest.approx(1.0)


def test_paired_se_by_hand_one_task_and_stratified():
    # one task, two cells: the SE of the difference of means is sqrt(var(a - b) / n), plug-in variance
    a, b = np.array([1.0, 0.0, 1.0, 1.0]), np.array([1.0, 1.0, 0.0, 1.0])
    se = paired_se({"t": np.vstack([a, b])}, np.ones((2, 1), bool), np.eye(2), [(0, 1)])
    assert np.array_equal(a - b, [0.0, -1.0, 1.0, 0.0])  # mean 0, plug-in variance 0.5
    assert se[0] == pytest.approx(np.sqrt(0.5 / 4), abs=1e-15)
    # two tasks of 3 and 2 rows, equal task weights: SE^2 = (var_1 / 3 + var_2 / 2) / 2^2
    t1 = np.array([[0.2, 0.4, 0.9], [0.1, 0.4, 0.3]])
    t2 = np.array([[1.0, 0.5], [0.0, 0.5]])
    se2 = paired_se({"x": t1, "y": t2}, np.ones((2, 2), bool), np.eye(2), [(0, 1), (1, 0)])
    d1, d2 = t1[0] - t1[1], t2[0] - t2[1]  # (0.1, 0, 0.6), (1, 0)
    want = np.sqrt((np.mean((d1 - d1.mean()) ** 2) / 3 + np.mean((d2 - d2.mean()) ** 2) / 2) / 4)
    assert se2 == pytest.approx([want, want], abs=1e-15)
    # a cell against itself: exactly 0 (paired); a constant shift: 0 too
    assert paired_se({"x": np.vstack([t1[0], t1[0] + 0.25])}, np.ones((2, 1), bool), np.eye(2), [(0, 1)])[0] == \
        pytest.approx(0.0, abs=1e-15)


def test_paired_se_matches_the_bootstrap_of_the_same_points():
    # seed means and `union` masks as the scale tables build them; correlated cells (shared example difficulty)
    rng = np.random.default_rng(11)
    n = [64, 64, 80, 64, 100]
    hard = {t: rng.normal(0, 1, nt) for t, nt in zip(TASKS, n)}
    ex = {t: np.clip(0.5 + 0.3 * hard[t][None, :] + rng.normal(0, 0.15, (4, nt)) + 0.02 * np.arange(4)[:, None], 0, 1)
          for t, nt in zip(TASKS, n)}
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 1, 1, 0, 0]], bool)
    points = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 2, 1]])  # point 2: two cells, one counted for two seeds
    pairs = [(1, 0), (2, 1), (2, 0)]
    rep = bootstrap_points(ex, mask, points, replicates=20000, seed=4)
    boot_se = np.array([(rep.boot[:, i] - rep.boot[:, j]).std() for i, j in pairs])
    se = paired_se(ex, mask, points, pairs)
    assert se == pytest.approx(boot_se, rel=0.03)
    # pairing matters: the unpaired SE (independent points) is about sqrt(1 / (1 - 0.8)) = 2.2 times larger here
    unpaired = np.sqrt(rep.boot[:, 1].var() + rep.boot[:, 0].var())
    assert unpaired > 1.8 * se[0]
    # task weights as in bootstrap_points
    w = [2.0, 1.0, 1.0, 0.5, 1.0]
    rep_w = bootstrap_points(ex, mask, points, replicates=20000, seed=4, task_weights=w)
    assert paired_se(ex, mask, points, pairs, task_weights=w) == pytest.approx(
        [(rep_w.boot[:, i] - rep_w.boot[:, j]).std() for i, j in pairs], rel=0.03)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: resample_counts({"a": 10}, replicates=50), "`replicates` must be >= 100, got 50"),
        (lambda: resample_counts({"a": 0}), "task 'a' has no examples"),
        (lambda: bootstrap_points({"a": np.zeros((2, 0))}, np.ones((2, 1), bool), np.eye(2)), "task 'a' has no examples"),
        (lambda: bootstrap_points({"a": [np.zeros(64), np.zeros(63)]}, np.ones((2, 1), bool), np.eye(2)),
         "task 'a': cells have [63, 64] examples"),
        (lambda: bootstrap_points({"a": np.zeros((2, 5)), "b": np.zeros((3, 5))}, np.ones((2, 2), bool), np.eye(2)),
         "different numbers of cells"),
        (lambda: bootstrap_points({"a": np.zeros((2, 5))}, np.ones((2, 2), bool), np.eye(2)), "`tasks_of` must be"),
        (lambda: bootstrap_points({"a": np.zeros((2, 5))}, np.ones((2, 1), bool), np.eye(3)), "`points` must be"),
        (lambda: bootstrap_points({"a": np.full((1, 5), np.nan)}, np.ones((1, 1), bool), np.eye(1)), "non-finite"),
        (lambda: percentile_interval(np.zeros(200), level=1.5), "`level` must be in (0, 1)"),
        (lambda: paired_se({"a": np.zeros((2, 5))}, np.ones((2, 1), bool), np.eye(2), [(0, 2)]), "`pairs` must index"),
        (lambda: paired_se({"a": np.zeros((2, 5))}, np.ones((2, 2), bool), np.eye(2), [(0, 1)]), "`tasks_of` must be"),
        (lambda: paired_se({"a": np.full((2, 5), np.inf)}, np.ones((2, 1), bool), np.eye(2), [(0, 1)]), "non-finite"),
        (lambda: paired_se({}, np.ones((2, 1), bool), np.eye(2), [(0, 1)]), "no tasks"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(call, message):
    with pytest.raises(ValueError) as e:
        call()
    assert message in str(e.value)
