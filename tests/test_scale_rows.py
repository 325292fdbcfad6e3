"""Per-example scores of every scale cell (``<run>/examples/<cell>.parquet``).

On a small real run with every kind of cell (base, expert, registry merges plain and with RHT,
a per-task merge, correlated pairs, GENOME and Model Swarms results plain and with RHT, scored
by the search phase's early scorer): the examples' means are the cells' scores, their rows are
the split files' rows (checked against an evaluator over the reversed files), and they are
written before the cell's file, which marks the cell done."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from evomerge.errors import OutputError
from evomerge.pipelines.scale.store import EXAMPLE_SCHEMA, CellStore

from _shared_scale import SHARED_SCALE

MAX_SAMPLES = SHARED_SCALE["evaluation"]["max_samples"]
BATCH = SHARED_SCALE["evaluation"]["batch_size"]  # the run's, for this test's own evaluator of the split files


@pytest.fixture(scope="module")
def run(shared_scale_run):
    """The run's directory and every Parquet path the store wrote, in the order written: the
    shared small run (tests/conftest.py, SHARED_SCALE: task arithmetic, TIES and EMR with and
    without RHT, pairs, GENOME and Model Swarms, seeds 0 and 1)."""
    return shared_scale_run


@pytest.mark.ray
def test_every_cell_keeps_examples_whose_means_are_its_scores(run, small_zoo):
    out, _ = run
    store = CellStore(out)
    scores = store.scores().to_pandas()
    ex = store.examples().to_pandas()
    assert ex.dtypes.to_dict() == EXAMPLE_SCHEMA.empty_table().to_pandas().dtypes.to_dict()
    kinds = scores.groupby("kind")["rht"].unique().map(lambda v: sorted(bool(x) for x in v)).to_dict()
    assert kinds == {"base": [False], "expert": [False], "merge": [False, True], "pair": [False],
                     "search": [False, True]}
    assert {"emr"} <= set(scores["method"]) and sorted(scores["split"].unique()) == ["test", "validation"]
    key = ["cell", "rht", "task", "split"]
    # a cell that stands for several seeds repeats its rows per seed, with the same scores
    want = scores.groupby(key)[["score", "cross_entropy"]].agg(["min", "max"])
    assert (want[("score", "min")] == want[("score", "max")]).all()
    got = ex.groupby(key).agg(score=("score", "mean"), cross_entropy=("cross_entropy", "mean"),
                              n=("row", "size"), first=("row", "min"), last=("row", "max"))
    assert sorted(got.index) == sorted(want.index)  # every (cell, variant, task, split), nothing else
    got = got.loc[want.index]
    assert np.abs(got["score"].to_numpy() - want[("score", "min")].to_numpy()).max() <= 1e-12
    assert np.abs(got["cross_entropy"].to_numpy() - want[("cross_entropy", "min")].to_numpy()).max() <= 1e-12
    # validation: the first max_samples rows of each task; test: every row of the split
    sizes = {t: len(small_zoo.load_tasks([t], splits=("test",))[t]["test"]) for t in scores["task"].unique()}
    for (cell, rht, task, split), r in got.iterrows():
        n = MAX_SAMPLES if split == "validation" else sizes[task]
        assert (r["n"], r["first"], r["last"]) == (n, 0, n - 1), (cell, rht, task, split)
    assert not ex.duplicated(key + ["row"]).any()
    # the search cells' RHT variant holds its own values (RHT does change the best individual)
    s = ex[ex["cell"] == scores.loc[scores["kind"] == "search", "cell"].iloc[0]]
    assert not np.array_equal(s[s["rht"]]["cross_entropy"].to_numpy(), s[~s["rht"]]["cross_entropy"].to_numpy())


@pytest.mark.ray
def test_rows_are_the_split_files_rows(run, small_zoo):
    """The base cell's examples against an evaluator over each split file reversed: row ``i``
    of the stored values is example ``n - 1 - i`` there."""
    from evomerge.evaluation import Evaluator

    out, _ = run
    ex = CellStore(out).examples().to_pandas()
    base = ex[ex["cell"] == "k000-base-plain-s0"]
    tasks = sorted(base["task"].unique())
    data = small_zoo.load_tasks(tasks, splits=("validation", "test"))
    rev = {}
    for t, splits in data.items():
        v = splits["validation"].select(range(MAX_SAMPLES))
        rev[t] = {"validation": v.select(range(len(v) - 1, -1, -1)),
                  "test": splits["test"].select(range(len(splits["test"]) - 1, -1, -1))}
    ev = Evaluator(small_zoo.base_dir, rev, max_samples=None, batch_size=BATCH)
    for split in ("validation", "test"):
        res = ev.evaluate_many([{}], split, per_example=True)[0].extra["examples"]
        for t in tasks:
            mine = base[(base["task"] == t) & (base["split"] == split)].sort_values("row")
            np.testing.assert_allclose(mine["score"].to_numpy(), res[t]["token_accuracy"][::-1], atol=1e-9)
            np.testing.assert_allclose(mine["cross_entropy"].to_numpy(), res[t]["cross_entropy"][::-1], atol=1e-5)


@pytest.mark.ray
def test_examples_are_written_before_the_cell_file(run):
    out, written = run
    cells = [w.split("/", 1)[1] for w in written if w.startswith("cells/")]
    assert sorted(cells) == sorted(CellStore(out).done()) and cells
    for cell in cells:
        assert f"examples/{cell}" in written[: written.index(f"cells/{cell}")], cell


def test_a_failed_examples_write_leaves_the_cell_undone(tmp_path):
    store = CellStore(tmp_path)
    rows = [{"cell": "c", "kind": "base", "k": 0, "method": "base", "rht": False, "seed": 0, "experts": "",
             "task": "a", "in_subset": False, "split": "validation", "score": 0.5, "seconds": 1.0,
             "cross_entropy": 1.0}]
    table = pa.Table.from_pydict({"cell": ["c"] * 2, "task": ["a"] * 2, "split": ["validation"] * 2, "row": [0, 1],
                                  "score": [0.0, 1.0], "cross_entropy": [0.5, 1.5], "rht": [False] * 2},
                                 schema=EXAMPLE_SCHEMA)
    (tmp_path / "examples").write_text("not a folder")  # the examples cannot be written
    with pytest.raises(OutputError, match="examples"):
        store.write("c", rows, examples=table)
    assert store.done() == set() and not (tmp_path / "cells" / "c.parquet").exists()
    (tmp_path / "examples").unlink()
    store.write("c", rows, examples=table)
    assert store.done() == {"c"} and store.examples().equals(table) and store.examples(["c", "x"]).equals(table)


def test_a_run_dir_without_examples_reads_as_empty(tmp_path):
    store = CellStore(tmp_path)
    assert store.examples().num_rows == 0 and store.examples().schema == EXAMPLE_SCHEMA
    rows = [{"cell": "old", "kind": "base", "k": 0, "method": "base", "rht": False, "seed": 0, "experts": "",
             "task": "a", "in_subset": False, "split": "validation", "score": 0.5, "seconds": 1.0}]
    store.write("old", rows)  # a cell of an older run: scores only
    assert store.done() == {"old"}
    assert store.examples().num_rows == 0 and store.examples(["old"]).num_rows == 0
