"""A scale run killed after k=2 resumes without recomputing finished cells and ends with the
same table as an uninterrupted run."""

from __future__ import annotations

import pandas as pd
import pytest

from evomerge.config import config_from_dict
from evomerge.driver import FAIL_AFTER_ENV, InjectedFailure, run_scale
from evomerge.scale.store import CellStore

pytestmark = pytest.mark.ray

CFG = {
    "evaluation": {"max_samples": 16, "batch_size": 16},
    "scale": {
        "methods": ["task_arithmetic", "dare_ties"],
        "with_rht": True,
        "seeds": [0],
        "order": "given",
        "k_max": 3,
        "stop": False,
        "hist_samples": 200,
    },
    "ray": {"num_actors": 2},
}


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _table(run_dir):
    t = CellStore(run_dir).scores().to_pandas().drop(columns=["seconds"])
    return t.sort_values(["k", "method", "rht", "seed", "task", "split"], ignore_index=True)


def test_killed_run_resumes_from_finished_cells(small_zoo, tmp_path, ray_session, monkeypatch):
    cfg = config_from_dict({**CFG, "zoo_dir": str(small_zoo.root)})
    full = run_scale(cfg, tmp_path / "full", zoo=small_zoo, progress=False, analyze=False)
    assert full.cells_run == full.cells_total

    # kill after every cell with k <= 2 is done: 2 (base, expert) + 2 k-values x 4 cells
    n_before = 2 + 2 * 4
    seen = []

    def on_done(cell, n):
        seen.append(cell)
        if n == n_before:
            raise InjectedFailure("killed after k=2")

    part = tmp_path / "part"
    with pytest.raises(InjectedFailure):
        run_scale(cfg, part, zoo=small_zoo, progress=False, analyze=False, on_cell_done=on_done)
    done_before = CellStore(part).done()
    assert done_before == {c.id for c in seen} and len(done_before) == n_before
    assert max(c.k for c in seen) >= 2  # cells finish out of order across actors; k=1 is surely done
    assert not (part / "report.md").exists()

    resumed = []
    res = run_scale(cfg, part, zoo=small_zoo, progress=False, analyze=False,
                    on_cell_done=lambda cell, n: resumed.append(cell))
    assert res.cells_skipped == n_before
    assert res.cells_run == full.cells_total - n_before == len(resumed)
    all_ids = CellStore(tmp_path / "full").done()
    assert {c.id for c in resumed} == all_ids - done_before  # nothing recomputed, nothing missed
    assert res.evaluations == 2 * len(resumed)  # validation + test per cell
    pd.testing.assert_frame_equal(_table(part), _table(tmp_path / "full"))
    assert (part / "report.md").is_file()


def test_env_var_failure_through_the_cli_then_resume(small_zoo, tmp_path, ray_session, monkeypatch):
    import yaml

    from evomerge.cli import main

    cfg_path = tmp_path / "c.yaml"
    cfg = {**CFG, "zoo_dir": str(small_zoo.root),
           "scale": {**CFG["scale"], "methods": ["task_arithmetic"], "with_rht": False, "k_max": 2}}
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    monkeypatch.setenv(FAIL_AFTER_ENV, "3")
    with pytest.raises(InjectedFailure):
        main(["scale", "--small", "--config", str(cfg_path), "--out", str(out), "--no-progress"])
    assert len(CellStore(out).done()) == 3
    monkeypatch.delenv(FAIL_AFTER_ENV)
    assert main(["scale", "--small", "--out", str(out), "--resume", "--no-progress"]) == 0
    # base, expert, k=1 and k=2 task arithmetic
    assert len(CellStore(out).done()) == 4
    assert (out / "report.md").is_file()
