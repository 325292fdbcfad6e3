"""``benchmarks/rht_scale_effect.py``: RHT - plain per (method, k) from a scale fitness table, with
seeds paired as the scale run draws them (a random merge's plain seed s with RHT seed s; a
deterministic merge's single plain seed with every RHT seed). Checked against sums written out."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import rht_scale_effect  # noqa: E402


def _f(method, k, rht, seed, fitness, split="validation", target="all", kind="merge"):
    return {"method": method, "k": k, "rht": rht, "seed": seed, "fitness": fitness, "split": split,
            "target": target, "kind": kind}


def test_pairs_random_merges_seed_by_seed_and_deterministic_ones_with_their_one_plain_seed():
    rows = [
        # deterministic: one plain value (its cell lists every seed, stored once per seed)
        _f("task_arithmetic", 2, False, 0, 0.50), _f("task_arithmetic", 2, False, 1, 0.50),
        _f("task_arithmetic", 2, True, 0, 0.503), _f("task_arithmetic", 2, True, 1, 0.497),
        _f("task_arithmetic", 2, True, 2, 0.500),
        # random (DARE): plain seeds differ; RHT seed s is compared with plain seed s
        _f("dare_ties", 3, False, 0, 0.40), _f("dare_ties", 3, False, 1, 0.45),
        _f("dare_ties", 3, True, 0, 0.41), _f("dare_ties", 3, True, 1, 0.44),
        # other target / kind: ignored
        _f("dare_ties", 3, True, 0, 0.0, target="union"), _f("dare_ties", 3, True, 0, 0.0, kind="pair"),
    ]
    out = {(r["method"], r["k"]): r for r in rht_scale_effect.effects(pd.DataFrame(rows), "all")}
    ta = out[("task_arithmetic", 2)]
    assert ta["n"] == 3
    assert ta["mean"] == pytest.approx((0.003 - 0.003 + 0.0) / 3, abs=1e-12)
    assert ta["worst"] == pytest.approx(-0.003)
    dare = out[("dare_ties", 3)]
    assert dare["n"] == 2
    assert dare["mean"] == pytest.approx((0.01 - 0.01) / 2, abs=1e-12)  # 0.41-0.40, 0.44-0.45
    assert dare["worst"] == pytest.approx(-0.01)
    assert dare["sd"] == pytest.approx(0.01 * 2 ** 0.5)
