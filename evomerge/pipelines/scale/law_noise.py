"""The evaluation noise the law on k <= m is told: per curve, the analytic standard errors of the
paired one-step differences between consecutive measured k <= m on validation.

Read from the per-example scores the run left (``examples/``) of the curve cells with k <= m
only (the law must predict before the rest is run), through the same per-task matrices as the
report's bootstrap (:mod:`evomerge.pipelines.scale.noise`) and
:func:`evomerge.evaluation.bootstrap.paired_se` (analytic: no replicates). A curve point is the
seed mean of its cells' target values (``all``: every task, ``union``: the cell's own tasks,
``all/ce``: cross-entropy over every task), as the fitness table computes it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from evomerge.evaluation.bootstrap import paired_se
from evomerge.pipelines.scale.noise import TARGETS, cell_units, example_matrices, union_mask

SPLIT = "validation"


def law_step_ses(scores: pd.DataFrame, examples: pd.DataFrame | None, m: int) -> dict[tuple[str, bool, str], list[float]]:
    """``(method, rht, target) -> [SE of point(k_2) - point(k_1), ...]`` over the consecutive
    measured k <= ``m`` (k >= 1) of the merge and search curves on validation; a step whose points
    miss a cell's examples gets NaN. Empty when the run has no per-example scores."""
    if examples is None or examples.empty or scores.empty:
        return {}
    s = scores[(scores["split"] == SPLIT) & scores["kind"].isin(["merge", "search"]) & (scores["k"] >= 1)
               & (scores["k"] <= m)]
    ex = examples[(examples["split"] == SPLIT) & examples["cell"].isin(s["cell"].unique())]
    if s.empty or ex.empty:
        return {}
    units = cell_units(s)
    tasks, present, sc, ce = example_matrices(s, ex, units, SPLIT)
    pos = {unit: i for i, unit in enumerate(present)}
    has_ce = all(np.isfinite(ce[t]).all() for t in tasks)
    union = union_mask(s, units, present, tasks)
    out: dict[tuple[str, bool, str], list[float]] = {}
    for (method, rht), g in units.groupby(["method", "rht"], sort=True):
        ks = sorted(int(k) for k in g["k"].unique())
        if len(ks) < 2:
            continue
        pts, complete = [], []
        for k in ks:
            w = np.zeros(len(present))
            gk = g[g["k"] == k]
            for unit, seeds in gk["seeds"].items():
                if unit in pos:
                    w[pos[unit]] = seeds
            complete.append(all(unit in pos for unit in gk.index) and w.sum() > 0)
            pts.append(w)
        pairs = [(j + 1, j) for j in range(len(ks) - 1)]
        ok = [complete[i] and complete[j] for i, j in pairs]
        use = np.array([p if c else np.ones(len(present)) for p, c in zip(pts, complete)])  # placeholders, dropped
        for target, col, in_union in TARGETS:
            if col == "cross_entropy" and not has_ce:
                continue
            mask = union if in_union else np.ones((len(present), len(tasks)), bool)
            ses = paired_se(sc if col == "score" else ce, mask, use, pairs)
            out[(str(method), bool(rht), target)] = [float(v) if c else float("nan") for v, c in zip(ses, ok)]
    return out
