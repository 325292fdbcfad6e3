"""A search curve cut by the enforced stop rule is not judged: its rows keep what was measured,
carry where it was cut, and leave the rule verdicts (a rule compared with the best k of a curve
that ends where the rule fired cannot miss)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from evomerge.config import EvomergeConfig
from evomerge.pipelines.scale.report_md import rule_verdicts
from evomerge.pipelines.scale.rules import cut_searches, judge

TASKS = ["t0", "t1", "t2", "t3", "t4", "t5"]


def test_cut_searches_reads_the_stop_file():
    stop = {"enforced": True, "methods": {
        "genome": {"fired": True, "k": 3, "ks_run": [2, 3]},      # cut before the grid's end
        "swarm": {"fired": True, "k": 6, "ks_run": [2, 3, 4, 5, 6]},  # fired at the last k: nothing cut
        "other": {"fired": False, "k": 4, "ks_run": [2, 3, 4]},    # never fired: not cut by the rule
    }}
    assert cut_searches(stop, [2, 3, 4, 5, 6]) == {"genome": 3}
    assert cut_searches({**stop, "enforced": False}, [2, 3, 4, 5, 6]) == {}
    assert cut_searches(None, [2, 3]) == {}
    assert cut_searches(stop, []) == {}


def _plan() -> dict:
    n = len(TASKS)
    corr = np.eye(n) + 0.1 * (1 - np.eye(n))
    return {"experts": TASKS, "expert_tasks": TASKS, "variances": [1.0] * n, "correlation": corr.tolist(),
            "orders": {"0": TASKS, "1": TASKS}, "stop": {"k_end": n, "delta_mode": "relative", "delta_value": 0.1}}


def _rows(method: str, kind: str, curve: dict[int, float]) -> list[dict]:
    rows = []
    for k, level in curve.items():
        for seed in (0, 1):
            for target in ("all", "union"):
                rows.append({"cell": f"k{k:03d}-{method}-s{seed}", "kind": kind, "k": k, "method": method, "rht": False,
                             "seed": seed, "experts": ",".join(TASKS[:k]), "split": "validation", "target": target,
                             "fitness": level, "n_tasks": k, "cross_entropy": 2.0 - level})
    return rows


def test_cut_rows_are_kept_but_not_judged():
    base = [{"cell": "k000-base-plain-s0", "kind": "base", "k": 0, "method": "base", "rht": False, "seed": 0,
             "experts": "", "split": "validation", "target": "all", "fitness": 0.30, "n_tasks": 6,
             "cross_entropy": 1.7}]
    ties = {1: 0.40, 2: 0.45, 3: 0.50, 4: 0.52, 5: 0.48, 6: 0.45}  # a registry merge, measured to the end
    genome = {2: 0.50, 3: 0.47}  # the searches' curve: the stop cut it at 3
    fitness = pd.DataFrame(base + _rows("ties", "merge", ties) + _rows("genome", "search", genome))
    scale = EvomergeConfig().scale
    records, _ = judge(_plan(), fitness, scale_cfg=scale, pca_count=3, gains=None, cut={"genome": 3})

    g = [r for r in records if r["method"] == "genome"]
    t = [r for r in records if r["method"] == "ties"]
    assert g and t
    for r in g:
        assert r["cut_at"] == 3 and r["error"] is None
        assert r["peak_k"] == 2.0  # what was measured is kept: the best of k = 2, 3
    for r in t:
        assert r["cut_at"] is None
        if r["fired_k"] is not None and math.isfinite(r["peak_k"]):
            assert r["error"] == r["fired_k"] - r["peak_k"]
    # the TIES peak by hand: 4 on the metric, 4 on cross-entropy (2 - metric)
    assert {r["peak_k"] for r in t if r["target"] in ("all", "all/ce")} == {4.0}

    v = rule_verdicts(records, f"law_k<={scale.law_first_k}")
    online_ties = [r for r in t if r["rule"] == "online"]
    assert v["online_pairs"] == len(online_ties)  # only the judged rows count
    assert v["online_within_1"] == sum(abs(r["error"]) <= 1 for r in online_ties)

    uncut, _ = judge(_plan(), fitness, scale_cfg=scale, pca_count=3, gains=None)
    assert rule_verdicts(uncut, f"law_k<={scale.law_first_k}")["online_pairs"] > v["online_pairs"]
