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
    "ray": {"num_actors": 1},  # one actor keeps this test cheap; the e2e test runs two
}


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _table(run_dir):
    t = CellStore(run_dir).scores().to_pandas().drop(columns=["seconds"])
    return t.sort_values(["k", "method", "rht", "seed", "task", "split"], ignore_index=True)


def reference_table(cfg, zoo, run_dir) -> pd.DataFrame:
    """Every cell of the plan computed directly in this process (no Ray, no store, no resume)."""
    import json

    from evomerge.driver import make_context, pool_spec
    from evomerge.scale.plan import load_cells
    from evomerge.scale.work import CellWorker

    plan = json.loads((run_dir / "plan.json").read_text())
    worker = CellWorker(make_context(cfg, pool_spec(cfg, zoo), run_dir))
    rows = [r for cell in load_cells(plan) for r in worker.run(cell).rows]
    t = pd.DataFrame(rows).drop(columns=["seconds"]).astype({"k": "int32", "seed": "int64"})
    return t.sort_values(["k", "method", "rht", "seed", "task", "split"], ignore_index=True)


def test_killed_run_resumes_from_finished_cells(small_zoo, tmp_path, ray_session, monkeypatch):
    import yaml

    from evomerge.cli import main

    data = {**CFG, "zoo_dir": str(small_zoo.root)}
    cfg = config_from_dict(data)
    # kill the CLI run once every cell up to k=2 could be done: base, expert, 2 k-values x 4 cells
    n_before = 2 + 2 * 4
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    part = tmp_path / "part"
    monkeypatch.setenv(FAIL_AFTER_ENV, str(n_before))
    with pytest.raises(InjectedFailure):
        main(["scale", "--small", "--config", str(cfg_path), "--out", str(part), "--no-progress"])
    monkeypatch.delenv(FAIL_AFTER_ENV)
    done_before = CellStore(part).done()
    assert len(done_before) == n_before
    assert not (part / "report.md").exists()

    resumed = []
    res = run_scale(cfg, part, zoo=small_zoo, progress=False, on_cell_done=lambda cell, n: resumed.append(cell))
    assert res.cells_total == 2 + 3 * 4
    assert res.cells_skipped == n_before
    assert res.cells_run == res.cells_total - n_before == len(resumed)
    assert {c.id for c in resumed} | done_before == CellStore(part).done()  # nothing missed
    assert not {c.id for c in resumed} & done_before  # nothing recomputed
    assert max(c.k for c in resumed) == 3
    assert res.evaluations == 2 * len(resumed)  # validation + test per cell
    assert (part / "report.md").is_file()
    # the resumed table equals every cell computed in one go
    pd.testing.assert_frame_equal(_table(part), reference_table(cfg, small_zoo, part), check_dtype=False)
    # a finished run reruns nothing
    again = run_scale(cfg, part, zoo=small_zoo, progress=False, report=False)
    assert again.cells_run == 0 and again.evaluations == 0
