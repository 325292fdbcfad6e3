"""``benchmarks/rht_bound_study.py``'s trial score: the worst cell seed over both targets, the mean over
every scored value, cells in order of k, and the stop at the first value below ``-bound`` (the
cells after it are never computed)."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import rht_bound_study  # noqa: E402


class _Cells:
    """A run's RHT cells with given (all, union) changes per (cell id, seed); records what was computed."""

    def __init__(self, changes):
        self.changes = changes
        self.cells = [SimpleNamespace(id=cid, k=k, method=m, seeds=sorted(s for (c, s) in changes if c == cid))
                      for cid, k, m in {(cid, int(cid[1:4]), cid.split("-")[1]) for cid, _ in changes}]
        self.cells.reverse()  # the study must sort them itself
        self.asked = []

    def row(self, cell, seed, split, rht):
        assert split == "validation" and rht == "R"  # never test
        self.asked.append((cell.id, seed))
        d, du = self.changes[(cell.id, seed)]
        return {"diff": d, "diff_union": du}


def test_feasible_trial_scores_every_cell_seed_and_both_targets():
    ch = {("k001-ties-rht", 0): (0.001, -0.0015), ("k001-ties-rht", 1): (0.0, 0.0005),
          ("k002-emr-rht", 0): (-0.0004, 0.002)}
    cells = _Cells(ch)
    res = rht_bound_study.score_trial(cells, "R", 0.002)
    values = [v for pair in ch.values() for v in pair]
    assert res["complete"] and res["n"] == 6
    assert res["worst"] == -0.0015 and res["where"] == "ties k=1 seed=0 union"
    assert res["mean"] == statistics.mean(values)
    assert [c for c, _ in cells.asked] == ["k001-ties-rht", "k001-ties-rht", "k002-emr-rht"]  # by k


def test_a_value_below_the_bound_stops_the_trial():
    ch = {("k001-ties-rht", 0): (0.0, 0.0), ("k002-emr-rht", 0): (-0.0021, 0.001),
          ("k003-emr-rht", 0): (0.5, 0.5)}
    cells = _Cells(ch)
    res = rht_bound_study.score_trial(cells, "R", 0.002)
    assert not res["complete"] and res["worst"] == -0.0021 and res["where"] == "emr k=2 seed=0 all"
    assert ("k003-emr-rht", 0) not in cells.asked and res["n"] == 4
    # exactly at the bound is within it
    ch[("k002-emr-rht", 0)] = (-0.002, 0.001)
    assert rht_bound_study.score_trial(_Cells(ch), "R", 0.002)["complete"]
