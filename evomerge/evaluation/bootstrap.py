"""Evaluation-set noise: a paired, task-stratified bootstrap over evaluation examples.

A scale cell's score on a task is the mean of its per-example scores on that task's rows, and
every cell is scored on the same rows. The bootstrap redraws each task's rows with replacement
(stratified: each task keeps its own number of rows) and recomputes every cell's per-task means
with the *same* redrawn rows, so the difference between two cells, two k or two methods is
paired: noise the cells share (an easy or hard draw of examples) cancels in it.

A replicate's value of a curve point is computed as the scale tables compute it: the per-task
means, then the (weighted) mean over the tasks of the target (every task of the pool, or the k
merged experts' tasks), then the mean over the point's seeds. The interval covers the choice of
evaluation examples only; the seeds' spread is a separate column of the report.

Pure numpy: no I/O. Seeds through :func:`evomerge.seeding.derive_rng`, one stream per task, so
a task's redraws do not depend on which other tasks are present.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from evomerge.seeding import derive_rng

MIN_REPLICATES = 100


@dataclass(frozen=True)
class Replicates:
    """``value[p]``: point p on the examples as measured; ``boot[b, p]``: on replicate b."""

    value: np.ndarray
    boot: np.ndarray


def resample_counts(n_rows: Mapping[str, int], *, replicates: int = 2000, seed: int = 0,
                    stream: Sequence[int | str] = ()) -> dict[str, np.ndarray]:
    """Per task, ``counts[b, i]``: how often row i is drawn in replicate b (n_t draws with
    replacement from the task's n_t rows). One stream per (seed, stream words, task)."""
    if int(replicates) < MIN_REPLICATES:
        raise ValueError(f"bootstrap: `replicates` must be >= {MIN_REPLICATES}, got {replicates}")
    out = {}
    for task, n in n_rows.items():
        n = int(n)
        if n <= 0:
            raise ValueError(f"bootstrap: task {task!r} has no examples")
        idx = derive_rng("evaluation-bootstrap", seed, *stream, task).integers(0, n, size=(replicates, n))
        flat = idx + (np.arange(replicates) * n)[:, None]
        out[task] = np.bincount(flat.ravel(), minlength=replicates * n).reshape(replicates, n)
    return out


def _matrix(task: str, cells: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    if not isinstance(cells, np.ndarray):
        lengths = sorted({len(c) for c in cells})
        if len(lengths) > 1:
            raise ValueError(f"bootstrap: task {task!r}: cells have {lengths} examples; pairing needs the same rows "
                             "for every cell")
        cells = np.asarray(list(cells), dtype=np.float64)
    x = np.asarray(cells, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"bootstrap: task {task!r}: expected (cells, rows) values, got shape {x.shape}")
    if x.shape[1] == 0:
        raise ValueError(f"bootstrap: task {task!r} has no examples")
    if not np.isfinite(x).all():
        raise ValueError(f"bootstrap: task {task!r}: non-finite example values")
    return x


@dataclass(frozen=True)
class TaskMeans:
    """``value[c, t]``: cell c's mean on task t as measured; ``boot[t][b, c]``: on replicate b
    (the same redrawn rows for every cell)."""

    tasks: tuple[str, ...]
    value: np.ndarray
    boot: list[np.ndarray]


def task_means(examples: Mapping[str, np.ndarray | Sequence[np.ndarray]], *, replicates: int = 2000, seed: int = 0,
               stream: Sequence[int | str] = ()) -> TaskMeans:
    """Per-task means of C cells, measured and on each replicate. ``examples[task]``: (C, n_task)
    per-example values, the same rows in the same order for every cell (or a sequence of C row
    vectors)."""
    tasks = list(examples)
    if not tasks:
        raise ValueError("bootstrap: no tasks")
    xs = {t: _matrix(t, examples[t]) for t in tasks}
    n_cells = {x.shape[0] for x in xs.values()}
    if len(n_cells) != 1:
        raise ValueError(f"bootstrap: tasks hold different numbers of cells {sorted(n_cells)}")
    counts = resample_counts({t: xs[t].shape[1] for t in tasks}, replicates=replicates, seed=seed, stream=stream)
    value = np.stack([xs[t].mean(axis=1) for t in tasks], axis=1)
    # (B, n) @ (n, C): each task's redrawn means of every cell at once
    boot = [counts[t].astype(np.float64) @ xs[t].T / xs[t].shape[1] for t in tasks]
    return TaskMeans(tuple(tasks), value, boot)


def _weights(c: int, n_tasks: int, tasks_of, points, task_weights) -> tuple[np.ndarray, np.ndarray]:
    """Checked and normalised ``(w, pts)``: ``w[c, t]`` task t's weight in cell c's mean (rows sum
    to 1) and ``pts[p, c]`` cell c's weight in point p (rows sum to 1)."""
    mask = np.asarray(tasks_of, dtype=bool)
    if mask.shape != (c, n_tasks):
        raise ValueError(f"bootstrap: `tasks_of` must be (cells, tasks) = {(c, n_tasks)}, got {mask.shape}")
    w_task = np.ones(n_tasks) if task_weights is None else np.asarray(task_weights, dtype=np.float64)
    if w_task.shape != (n_tasks,) or (w_task < 0).any():
        raise ValueError(f"bootstrap: `task_weights` must be {n_tasks} non-negative numbers")
    w = mask * w_task
    if not (w.sum(axis=1) > 0).all():
        raise ValueError(f"bootstrap: cell(s) {np.flatnonzero(w.sum(axis=1) <= 0).tolist()} count no task")
    w = w / w.sum(axis=1, keepdims=True)
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != c or (pts < 0).any() or not (pts.sum(axis=1) > 0).all():
        raise ValueError(f"bootstrap: `points` must be (points, {c}) non-negative weights, each row with a cell")
    return w, pts / pts.sum(axis=1, keepdims=True)


def aggregate(means: TaskMeans, tasks_of: np.ndarray, points: np.ndarray,
              task_weights: Sequence[float] | None = None) -> Replicates:
    """P curve points from the cells' task means: cell c's value = the (weighted) mean over the
    tasks ``tasks_of[c]`` ((C, T) bool), point p = the weighted mean of its cells' values
    (``points``: (P, C) non-negative weights, e.g. a cell's number of seeds); ``task_weights``:
    (T,) weights of the tasks in a cell's mean (default equal, as the scale tables)."""
    c, n_tasks = means.value.shape
    w, pts = _weights(c, n_tasks, tasks_of, points, task_weights)
    used = np.flatnonzero(pts.sum(axis=0) > 0)  # only the cells some point averages
    if used.size and used[-1] - used[0] + 1 == used.size:
        used = slice(int(used[0]), int(used[-1]) + 1)  # a view, not a copy, of each task's replicates
    value_cells = (means.value[used] * w[used]).sum(axis=1)
    boot_cells = np.zeros((means.boot[0].shape[0], len(value_cells)))
    for j in range(n_tasks):
        boot_cells += means.boot[j][:, used] * w[used, j]
    return Replicates(value=pts[:, used] @ value_cells, boot=boot_cells @ pts[:, used].T)


def bootstrap_points(examples: Mapping[str, np.ndarray | Sequence[np.ndarray]], tasks_of: np.ndarray,
                     points: np.ndarray, *, replicates: int = 2000, seed: int = 0, stream: Sequence[int | str] = (),
                     task_weights: Sequence[float] | None = None) -> Replicates:
    """:func:`task_means` then :func:`aggregate`: bootstrap replicates of P curve points made of
    C cells."""
    return aggregate(task_means(examples, replicates=replicates, seed=seed, stream=stream), tasks_of, points,
                     task_weights)


def percentile_interval(boot: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval per column of ``boot`` (B, ...) at ``level``."""
    if not 0 < level < 1:
        raise ValueError(f"bootstrap: `level` must be in (0, 1), got {level}")
    a = (1 - level) / 2
    lo, hi = np.quantile(np.asarray(boot, dtype=np.float64), [a, 1 - a], axis=0)
    return lo, hi


def paired_difference(rep: Replicates, i: int, j: int, level: float = 0.95) -> tuple[float, float, float]:
    """Point i minus point j as measured, and the percentile interval of the paired replicates'
    difference (the same redrawn examples on both sides)."""
    lo, hi = percentile_interval(rep.boot[:, i] - rep.boot[:, j], level)
    return float(rep.value[i] - rep.value[j]), float(lo), float(hi)


def best_share(boot: np.ndarray, *, lower_is_better: bool = False) -> np.ndarray:
    """Per column of a curve's replicates (B, K): the share of replicates in which that k is the
    curve's best (a tie counts 1/m for each of the m tied k)."""
    b = np.asarray(boot, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] == 0:
        raise ValueError(f"bootstrap: a curve's replicates must be (B, K >= 1), got shape {b.shape}")
    best = b.min(axis=1, keepdims=True) if lower_is_better else b.max(axis=1, keepdims=True)
    hit = b == best
    return (hit / hit.sum(axis=1, keepdims=True)).mean(axis=0)


def within_noise(rep: Replicates, curve: Sequence[int], best: int, level: float = 0.95) -> np.ndarray:
    """For the points ``curve`` (indices into ``rep``): whether the paired difference from point
    ``best`` has a ``level`` interval containing 0 (``best`` itself: True)."""
    idx = np.asarray(list(curve), dtype=int)
    lo, hi = percentile_interval(rep.boot[:, idx] - rep.boot[:, [best]], level)
    return (lo <= 0) & (hi >= 0)


def paired_se(examples: Mapping[str, np.ndarray | Sequence[np.ndarray]], tasks_of: np.ndarray, points: np.ndarray,
              pairs: Sequence[tuple[int, int]], task_weights: Sequence[float] | None = None) -> np.ndarray:
    """Analytic standard error of point i minus point j for each ``(i, j)`` in ``pairs``: what
    the paired, task-stratified bootstrap of :func:`bootstrap_points` (same ``examples``,
    ``tasks_of``, ``points``, ``task_weights``) estimates, without replicates. A point's value is
    ``sum_t sum_r y[t, r] / n_t`` with ``y[t, r]`` the weighted sum of its cells' scores on row r
    of task t, so the difference is a sum of per-task means of ``d = y_i - y_j`` and, each task's
    rows redrawn independently, ``SE^2 = sum_t var_t(d) / n_t`` (plug-in variance, ddof 0: the
    bootstrap's own). Rows the two points share cancel in ``d``: the SE is paired."""
    tasks = list(examples)
    if not tasks:
        raise ValueError("bootstrap: no tasks")
    xs = [_matrix(t, examples[t]) for t in tasks]
    c = {x.shape[0] for x in xs}
    if len(c) != 1:
        raise ValueError(f"bootstrap: tasks hold different numbers of cells {sorted(c)}")
    w, pts = _weights(c.pop(), len(tasks), tasks_of, points, task_weights)
    pr = np.asarray(list(pairs), dtype=int).reshape(-1, 2)
    if pr.size and (pr.min() < 0 or pr.max() >= pts.shape[0]):
        raise ValueError(f"bootstrap: `pairs` must index the {pts.shape[0]} points")
    coef = pts[pr[:, 0]] - pts[pr[:, 1]]  # (pairs, C): each cell's weight in the difference
    var = np.zeros(len(pr))
    for j, x in enumerate(xs):
        d = (coef * w[:, j]) @ x  # (pairs, n_t): the difference's per-row values on task j
        var += d.var(axis=1) / x.shape[1]
    return np.sqrt(var)
