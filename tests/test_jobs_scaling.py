"""`evomerge evolve-scaling`'s table and figure (speedup/efficiency arithmetic checked by hand)."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from evomerge.pipelines.evolve.scaling import COLUMNS, add_speedups, write_scaling


def rows():
    # 1 actor: 40 evaluations in 20 s (2/s), 30 s end to end; 2 actors: 40 in 12.5 s (3.2/s), 25 s;
    # 4 actors: 40 in 8 s (5/s), 20 s.
    return [
        {"n_actors": n, "n_nodes": n, "evaluations": 40, "eval_seconds": e, "total_seconds": t,
         "evals_per_s": 40 / e, "best_fitness": 0.5, "actor_busy_s": "[]"}
        for n, e, t in [(1, 20.0, 30.0), (2, 12.5, 25.0), (4, 8.0, 20.0)]
    ]


def test_speedup_efficiency_and_end_to_end() -> None:
    out = add_speedups(rows())
    assert [r["speedup"] for r in out] == pytest.approx([1.0, 1.6, 2.5])
    assert [r["efficiency"] for r in out] == pytest.approx([1.0, 0.8, 0.625])
    assert [r["e2e_speedup"] for r in out] == pytest.approx([1.0, 1.2, 1.5])


def test_table_and_png_are_written(tmp_path) -> None:
    files = write_scaling(add_speedups(rows()), tmp_path)
    table = pq.read_table(files["table"])
    assert table.column_names == list(COLUMNS)
    assert table.column("n_actors").to_pylist() == [1, 2, 4]
    assert table.column("efficiency").to_pylist() == pytest.approx([1.0, 0.8, 0.625])
    assert files["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
