"""The report's search table says which operation made each search's best individual, read from
the search's own ``history.parquet``, and how many searches returned a member of their initial
population (generation 0) rather than one their own steps made."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from evomerge.pipelines.scale.plan import Cell
from evomerge.pipelines.scale.report_md import _search_section
from evomerge.pipelines.scale.search_cells import search_dir, search_scores


def _search(run_dir, cell: Cell, best_id: str, history: list[tuple[str, str, int, float]]) -> None:
    d = search_dir(run_dir, cell)
    d.mkdir(parents=True)
    (d / "result.json").write_text(json.dumps({"best_id": best_id, "best_fitness": max(h[3] for h in history),
                                               "best_test_fitness": 0.5}))
    pq.write_table(pa.table({"id": [h[0] for h in history], "op": [h[1] for h in history],
                             "generation": [h[2] for h in history], "fitness": [h[3] for h in history]}),
                   d / "history.parquet")


def test_best_op_and_generation_come_from_the_history(tmp_path):
    a = Cell(kind="search", k=2, method="genome", rht=True, seed=0, seeds=(0,), experts=(0, 1))
    b = Cell(kind="search", k=2, method="genome", rht=True, seed=1, seeds=(1,), experts=(0, 1))
    _search(tmp_path, a, "g0.4", [("g0.0", "expert", 0, 0.6), ("g0.4", "init_sum", 0, 0.8), ("g1.0", "crossover", 1, 0.7)])
    _search(tmp_path, b, "g3.1", [("g0.4", "init_sum", 0, 0.8), ("g3.1", "mutate_coeff", 3, 0.85)])
    rows = search_scores(tmp_path, [a, b], {a.id: 0.61})
    assert [(r["seed"], r["best_op"], r["best_generation"]) for r in rows] == [(0, "init_sum", 0), (1, "mutate_coeff", 3)]
    assert rows[0]["test_val_selected"] == 0.61 and rows[1]["test_val_selected"] == 0.5
    text = "\n".join(_search_section({"searches": rows}))
    assert "| 2 | genome |" in text and "init_sum*, mutate_coeff (gen 3)" in text
    assert "1 of 2 searches returned an individual of their initial population; 1 one their own steps made." in text
