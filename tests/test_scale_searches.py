"""Searches of a scale run in flight at once on several actor slots, with the merge cells running
beside them (``overlap``), give exactly the results of one search at a time followed by the
cells, and the online rule cuts each method's k grid the same way."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from evomerge.config import config_from_dict

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # two tiny scale runs with GENOME and Model Swarms


def _run(small_zoo, out, actors: int, overlap: bool = True, analyze: bool = False):
    from evomerge.pipelines.scale.driver import run_scale

    cfg = config_from_dict({
        "evaluation": {"max_samples": 12, "batch_size": 64},  # test: all 200 rows a task, 4 passes, not 17
        "scale": {"methods": ["task_arithmetic"], "search": ["genome", "swarm"], "seeds": [0, 1],
                  "with_rht": False, "k_max": 4, "law_first_k": 3, "pairs": False, "order": "given",
                  "hist_samples": 50},
        "genome": {"population": 3, "generations": 1, "early_stop_iter": 1},
        "swarm": {"max_iter": 1, "patience": 1},
        "ray": {"num_actors": actors},
    })
    run_scale(cfg, out, zoo=small_zoo, progress=False, analyze=analyze, overlap=overlap)
    return out


def test_concurrent_searches_match_one_at_a_time(small_zoo, tmp_path):
    one = _run(small_zoo, tmp_path / "one", 1, overlap=False, analyze=True)  # sequential: one step after the other
    two = _run(small_zoo, tmp_path / "two", 2, analyze=True)  # the analysis in its own process, beside the start
    # the pool analysis and the experts alone: the same numbers, wherever they ran
    assert (one / "expert_gains.json").read_bytes() == (two / "expert_gains.json").read_bytes()
    assert json.loads((one / "analysis" / "summary.json").read_text()) == json.loads((two / "analysis" / "summary.json").read_text())
    tables = sorted(p.name for p in (one / "analysis").glob("*.parquet"))
    assert tables == sorted(p.name for p in (two / "analysis").glob("*.parquet")) and len(tables) >= 5
    for name in tables:  # pandas' equals: NaN where the other has NaN (e.g. no drop at k = 1) is equal
        assert pq.read_table(one / "analysis" / name).to_pandas().equals(pq.read_table(two / "analysis" / name).to_pandas()), name
    s1 = json.loads((one / "search_stop.json").read_text())
    s2 = json.loads((two / "search_stop.json").read_text())
    assert s1["slots"] == 1 and s1["most_in_flight"] == 1
    assert s2["slots"] == 2 and s2["most_in_flight"] == 2  # several searches really ran at once
    assert s1["methods"] == s2["methods"] and s1["skipped"] == s2["skipped"]
    ran = sorted(p.name for p in (one / "search").iterdir())
    assert ran == sorted(p.name for p in (two / "search").iterdir()) and len(ran) >= 8  # 2 methods x 2 seeds x >= 2 k
    for name in ran:
        r1 = json.loads((one / "search" / name / "result.json").read_text())
        r2 = json.loads((two / "search" / name / "result.json").read_text())
        assert r1["best_id"] == r2["best_id"] and r1["best_fitness"] == r2["best_fitness"], name
        assert r1["best_test_fitness"] == r2["best_test_fitness"], name
        # the cell is scored on the exact dense result: no SVD'd adapter is made for it
        assert (one / "search" / name / "best_task_vector").is_dir() and not (one / "search" / name / "best_adapter").exists()
    f1 = pq.read_table(one / "tables" / "scores.parquet").to_pandas()
    f2 = pq.read_table(two / "tables" / "scores.parquet").to_pandas()
    key = ["cell", "seed", "task", "split"]
    f1, f2 = f1.sort_values(key).reset_index(drop=True), f2.sort_values(key).reset_index(drop=True)
    assert f1[key].equals(f2[key])
    assert (f1["score"] == f2["score"]).all() and (f1["cross_entropy"] == f2["cross_entropy"]).all()
    # the sequential run wrote every merge cell after its last search; the overlapped one wrote
    # merge cells while searches were still running (with the default stop target `all` both
    # score each search's cell, and the base's, during the search phase: the rule reads them)
    def last_search(run):
        return max((p / "result.json").stat().st_mtime for p in (run / "search").iterdir())

    def first_cell(run):
        return min(p.stat().st_mtime for p in (run / "cells").glob("k*-*-*-s*.parquet") if not p.name.startswith("k000"))

    for run in (one, two):  # the searches' own cells were scored before their method's next k started
        stop = json.loads((run / "search_stop.json").read_text())
        assert stop["stop_target"] == "all"
        for method, d in stop["methods"].items():
            for k_prev, k_next in zip(d["ks_run"], d["ks_run"][1:]):
                scored = max((run / "cells" / f"k{k_prev:03d}-{method}-s{s}.parquet").stat().st_mtime for s in (0, 1))
                started = min((run / "search" / f"k{k_next:03d}-{method}-s{s}" / "run.json").stat().st_mtime for s in (0, 1))
                assert scored <= started, (method, k_prev)

    assert first_cell(one) > last_search(one)
    assert first_cell(two) < last_search(two)
