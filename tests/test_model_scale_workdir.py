"""``benchmarks/model_scale.py``: a ``--workdir`` is reused when complete for the same arguments
(the GPU check writes the 1b files once for two parts), rebuilt otherwise; the naive phase
times the loops it names and scores the same candidates as the evaluator."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _args(**kw):
    base = dict(size="tiny", experts=2, dtype="float32", tasks=1, samples=4, rank=2, rel_norm=0.005, seed=0)
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.fixture(scope="module")
def build():
    sys.path.insert(0, str(BENCH))
    import model_scale_build

    return model_scale_build


def test_workdir_reused_when_complete_and_rebuilt_otherwise(build, tmp_path):
    ws, reused = build.load_or_build_workspace(tmp_path, _args())
    assert not reused and (tmp_path / build.MARKER).is_file()
    weights = ws["base"] / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    again, reused = build.load_or_build_workspace(tmp_path, _args())
    assert reused and again["base"] == ws["base"] and again["experts"] == ws["experts"]
    assert again["tasks"] == ws["tasks"] and again["n_params"] == ws["n_params"]
    assert weights.stat().st_mtime_ns == stamp  # not rewritten

    other, reused = build.load_or_build_workspace(tmp_path, _args(seed=1))  # other arguments: rebuilt
    assert not reused and json.loads((tmp_path / build.MARKER).read_text())["args"]["seed"] == 1
    assert weights.stat().st_mtime_ns != stamp

    (tmp_path / build.MARKER).unlink()  # an interrupted build (no marker): rebuilt, not trusted
    _, reused = build.load_or_build_workspace(tmp_path, _args(seed=1))
    assert not reused


def test_naive_phase_times_both_loops_on_the_same_scores(build, tmp_path):
    import model_scale_naive

    ws, _ = build.load_or_build_workspace(tmp_path, _args())
    args = argparse.Namespace(device="cpu", batch_size=64, samples=4, naive=2, naive_repeats=2,
                              naive_loop=["reload", "copy"])
    res = model_scale_naive.naive_phase(args, ws)
    assert res["candidates"] == 2 and len(res["in_memory_s_each"]) == 2
    assert res["in_memory_s"] == pytest.approx(sum(res["in_memory_s_each"]) / 2)
    assert res["speedup"] == pytest.approx(res["naive_s"] / res["in_memory_s"])
    assert res["speedup_copy"] == pytest.approx(res["naive_copy_s"] / res["in_memory_s"])
    assert res["max_score_diff"] < 1e-6
