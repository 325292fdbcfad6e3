"""The online rule's tolerance is one function, and its two users agree on it: the search driver
(deciding, after each k, whether a search's next k is worth running) and the report (replaying
the rule over the measured curves)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from evomerge.config import EvomergeConfig
from evomerge.pipelines.scale.rules import judge
from evomerge.pipelines.scale.search_cells import base_union, online_decision
from evomerge.theory.online_rule import online_tolerance

TASKS = ["t0", "t1", "t2", "t3", "t4"]
BASE = {"t0": 0.10, "t1": 0.20, "t2": 0.15, "t3": 0.30, "t4": 0.25}


def test_tolerance_by_hand():
    # 0.1 of |mean(0.5, 0.6, 0.7) - 0.3| = 0.1 * 0.3
    assert online_tolerance(0.1, [0.5, 0.6, 0.7], 0.3) == pytest.approx(0.03, abs=1e-15)
    assert online_tolerance(0.1, [0.1, 0.2], 0.4) == pytest.approx(0.025, abs=1e-15)  # a loss: |gain|
    assert online_tolerance(0.1, [0.5], None) == 0.0  # base unknown: no tolerance
    assert online_tolerance(0.1, [0.5], math.nan) == 0.0
    assert online_tolerance(0.1, [], 0.3) == 0.0


def _plan(k_end: int) -> dict:
    n = len(TASKS)
    corr = np.eye(n) + 0.1 * (1 - np.eye(n))
    return {"experts": TASKS, "expert_tasks": TASKS, "variances": [1.0] * n, "correlation": corr.tolist(),
            "orders": {"0": TASKS, "1": TASKS, "2": TASKS},
            "stop": {"k_end": k_end, "delta_mode": "relative", "delta_value": 0.1}}


@pytest.mark.parametrize("curve, fires_at", [
    ({2: 0.50, 3: 0.58, 4: 0.585, 5: 0.586}, 4),  # rises, then flattens: fires once the gain is small
    ({2: 0.50, 3: 0.44, 4: 0.40, 5: 0.39}, 3),    # falls from the first k: turns at once
    ({2: 0.30, 3: 0.45, 4: 0.60, 5: 0.75}, None),  # keeps rising: never fires
])
def test_search_driver_and_report_agree(curve, fires_at):
    """The same search curve: the driver's decision (on the points seen so far, as after each
    k) and the report's replay over the whole curve use the same tolerance and fire at the
    same k."""
    scale = EvomergeConfig().scale
    rng = np.random.default_rng(0)
    points, rows = [], []
    for k, level in curve.items():
        experts = ",".join(TASKS[:k])
        for seed in (0, 1, 2):
            f = level + float(rng.normal(0, 0.002))
            points.append((k, f))
            rows.append({"cell": f"k{k:03d}-genome-s{seed}", "kind": "search", "k": k, "method": "genome", "rht": False,
                         "seed": seed, "experts": experts, "split": "validation", "target": "union", "fitness": f,
                         "n_tasks": k, "cross_entropy": math.nan})
    fitness = pd.DataFrame(rows)
    gains = {"base": BASE}
    base = base_union(gains, TASKS, (0, 1))  # the tasks of the first k = 2 experts
    assert base == pytest.approx((0.10 + 0.20) / 2)

    records, _ = judge(_plan(len(curve) + 1), fitness, scale_cfg=scale, pca_count=None, gains=gains)
    online = [r for r in records if r["rule"] == "online" and r["method"] == "genome" and r["target"] == "union"]
    assert len(online) == 1
    report = online[0]

    first = [f for k, f in points if k == 2]
    expected = scale.online_tol * abs(sum(first) / 3 - base)  # by hand: a fraction of the first k's gain
    fired_at = None
    for last in sorted(curve)[1:]:  # the driver decides after each k with the points so far
        d = online_decision([p for p in points if p[0] <= last], base, scale)
        assert d["tol"] == report["tol"]  # one function: the same number, bit for bit
        if d["fired"] and fired_at is None:
            fired_at = d["k"]
    assert report["tol"] == pytest.approx(expected, rel=1e-12)
    assert fired_at == fires_at
    assert report["fired"] == (fires_at is not None)
    if fires_at is not None:
        assert report["fired_k"] == fires_at
