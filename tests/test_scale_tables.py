"""Per-task scores -> fitness per target -> peaks, and the append-only cell store (no Ray)."""

from __future__ import annotations

import pandas as pd
import pytest

from evomerge.pipelines.scale.store import CellStore
from evomerge.pipelines.scale.tables import fitness_table, peaks


def _rows(cell, kind, k, method, rht, seed, experts, scores, split="validation"):
    subset = set(experts.split(",")) if experts else set()
    return [
        {"cell": cell, "kind": kind, "k": k, "method": method, "rht": rht, "seed": seed, "experts": experts,
         "task": t, "in_subset": t in subset, "split": split, "score": s, "seconds": 1.0}
        for t, s in scores.items()
    ]


def test_store_round_trip_and_fitness_targets(tmp_path):
    store = CellStore(tmp_path)
    assert store.done() == set() and store.scores().num_rows == 0
    store.write("k000-base", _rows("k000-base", "base", 0, "base", False, 0, "", {"a": 0.2, "b": 0.4, "c": 0.6}))
    store.write("k001-ta", _rows("k001-ta", "merge", 1, "ta", False, 0, "a", {"a": 0.9, "b": 0.3, "c": 0.3}),
                [{"cell": "k001-ta", "k": 1, "method": "ta", "rht": False, "seed": 0, "value": 0.5}])
    store.write("k002-ta", _rows("k002-ta", "merge", 2, "ta", False, 0, "a,b", {"a": 0.7, "b": 0.8, "c": 0.3}))
    assert store.done() == {"k000-base", "k001-ta", "k002-ta"}
    assert store.samples().num_rows == 1
    # a subset of cells: only their rows, in the order of the whole table; unknown ids are absent
    whole = store.scores().to_pandas()
    part = store.scores(["k002-ta", "k000-base", "missing"]).to_pandas()
    pd.testing.assert_frame_equal(part, whole[whole["cell"] != "k001-ta"].reset_index(drop=True))
    assert store.samples(["k002-ta"]).num_rows == 0 and store.samples(["k001-ta"]).num_rows == 1
    f = fitness_table(store.scores().to_pandas()).set_index(["cell", "target"])["fitness"]
    assert f[("k000-base", "all")] == pytest.approx(0.4)
    assert ("k000-base", "union") not in f.index  # the base model merges no expert
    assert f[("k001-ta", "all")] == pytest.approx(1.5 / 3)
    assert f[("k001-ta", "union")] == pytest.approx(0.9)
    assert f[("k002-ta", "all")] == pytest.approx(1.8 / 3)
    assert f[("k002-ta", "union")] == pytest.approx(0.75)


def test_peaks_use_the_seed_mean_and_break_ties_by_smallest_k():
    rows = []
    # method m: k=1 mean (0.5+0.7)/2=0.6, k=2 mean (0.65+0.65)/2=0.65, k=3 mean 0.65 (tie -> k=2)
    for k, vals in {1: (0.5, 0.7), 2: (0.65, 0.65), 3: (0.6, 0.7)}.items():
        for seed, v in enumerate(vals):
            rows += _rows(f"k{k}-s{seed}", "merge", k, "m", False, seed, "a", {"a": v})
            rows += _rows(f"k{k}-s{seed}", "merge", k, "m", False, seed, "a", {"a": v / 2}, split="test")
    p = peaks(fitness_table(pd.DataFrame(rows)), target="all").set_index("label")
    assert p.loc["m", "peak_k"] == 2
    assert p.loc["m", "val_mean"] == pytest.approx(0.65)
    assert p.loc["m", "val_std"] == pytest.approx(0.0)
    assert p.loc["m", "test_mean"] == pytest.approx(0.325)
    assert p.loc["m", "k_max_run"] == 3
