"""`evomerge report` on damaged or incomplete copies of one small real scale run (registry merges
with and without RHT, GENOME and Model Swarms, two seeds, the pool analysis):

* every file the report reads besides the cells' (plan.json, expert_gains.json, search_stop.json,
  timing.json, analysis/summary.json, a search's result.json and history.parquet) that cannot be
  read is one `error:` line naming it, exit code 2, nothing written.
"""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from _cli_helpers import one_error, run_cli

pytestmark = pytest.mark.ray

CFG = {
    "evaluation": {"max_samples": 12, "batch_size": 12},
    "scale": {"methods": ["task_arithmetic"], "search": ["genome", "swarm"], "seeds": [0, 1], "with_rht": True,
              "k_max": 4, "law_first_k": 3, "pairs": False, "order": "given", "hist_samples": 20},
    "genome": {"population": 3, "generations": 2, "early_stop_iter": 1},
    "swarm": {"max_iter": 2},
    "ray": {"num_actors": 2},
}
SEARCH = "k003-genome-s1"


@pytest.fixture(scope="module")
def run(small_zoo, tmp_path_factory):
    from evomerge.config import config_from_dict
    from evomerge.pipelines.scale.driver import run_scale

    out = tmp_path_factory.mktemp("report_run_files") / "run"
    run_scale(config_from_dict(CFG), out, zoo=small_zoo, progress=False)
    return out


@pytest.fixture
def copy(run, tmp_path):
    """The run without the searches' checkpoints and best results (the report reads neither)."""
    dst = tmp_path / "run"
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("checkpoints", "best_task_vector"))
    return dst


def _files(run_dir):
    return {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


def _report(run_dir):
    return json.loads((run_dir / "report.json").read_text())


def _truncated(path):
    path.write_text("{")


def _garbage(path):
    path.write_text("garbage\n")


def _a_list(path):
    path.write_text("[]")


def _no_fitness(path):
    pq.write_table(pq.read_table(path).drop_columns(["fitness"]), path)


@pytest.mark.parametrize("name,damage,problem", [
    ("plan.json", _truncated, "not readable JSON (Expecting property name enclosed in double quotes"),
    ("expert_gains.json", _truncated, "not readable JSON (Expecting property name"),
    ("search_stop.json", _a_list, "not readable JSON (a list, not an object)"),
    ("timing.json", _truncated, "not readable JSON (Expecting"),
    ("analysis/summary.json", _truncated, "not readable JSON (Expecting property name"),
    (f"search/{SEARCH}/result.json", _truncated, "not readable JSON (Expecting property name"),
    (f"search/{SEARCH}/history.parquet", _garbage, "not readable Parquet (Parquet magic bytes not found in footer)"),
    (f"search/{SEARCH}/history.parquet", _no_fitness, "not readable Parquet (no column fitness)"),
])
def test_a_run_file_that_cannot_be_read_is_one_line_naming_it(copy, capsys, name, damage, problem):
    path = copy / name
    damage(path)
    before = _files(copy)
    line = one_error(["report", copy], capsys)
    assert line.startswith(f"error: {path}: {problem}"), line
    if name.startswith("search/"):
        assert f"remove `{copy}/search/{SEARCH}` and `{copy}/cells/{SEARCH}.parquet`" in line, line
        assert f"`evomerge scale --out {copy} --resume` runs that search again" in line, line
    assert _files(copy) == before  # nothing written, nothing left behind
