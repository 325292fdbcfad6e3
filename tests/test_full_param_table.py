"""``benchmarks/full_param_table.py``'s table: the printed figures agree with a hand computation
over the rows (plain, RHT mean and sd over seeds, validation RHT - plain and its worst seed)."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import full_param_table  # noqa: E402


def _row(method, seed, val, test):
    return {"method": method, "rht": seed is not None, "seed": seed,
            "validation": {"mean": val, "per_task": {}}, "test": {"mean": test, "per_task": {}}}


def test_table_figures_match_a_hand_computation():
    rows = [_row("base", None, 0.5, 0.4), _row("ties", None, 0.60, 0.55)]
    vals, tests = [0.601, 0.597, 0.6025], [0.552, 0.549, 0.556]
    rows += [_row("ties", s, v, t) for s, (v, t) in enumerate(zip(vals, tests))]
    lines = full_param_table.table(rows, ["ties"]).splitlines()
    assert lines[2].startswith("| base model | 0.4000 |") and "| 0.5000 |" in lines[2]
    cells = [c.strip() for c in lines[3].strip("|").split("|")]
    t_mean, t_sd = sum(tests) / 3, statistics.stdev(tests)
    v_mean = sum(vals) / 3
    assert cells == ["ties", "0.5500", f"{t_mean:.4f}", f"{t_sd:.4f}", f"{t_mean - 0.55:+.4f}", "0.6000",
                     f"{v_mean:.4f}", f"{v_mean - 0.60:+.4f} ({0.597 - 0.60:+.4f})"]
    assert cells[-1] == "+0.0002 (-0.0030)"  # written out: mean 0.60017, worst seed 0.597
