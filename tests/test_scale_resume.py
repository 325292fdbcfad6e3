"""A scale run killed after k=2 resumes without recomputing finished cells and ends with the
same table as an uninterrupted run."""

from __future__ import annotations

import pandas as pd
import pytest

from evomerge.config import config_from_dict
from evomerge.pipelines.scale.driver import run_scale
from evomerge.pipelines.scale.store import CellStore

pytestmark = pytest.mark.ray

CFG = {
    "evaluation": {"max_samples": 16, "batch_size": 64},  # test: all 200 rows a task, 4 passes, not 13
    "scale": {
        "methods": ["task_arithmetic", "dare_ties"],
        "with_rht": True,
        "seeds": [0],
        "order": "given",
        "k_max": 4,
        "law_first_k": 3,
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

    from evomerge.pipelines.scale.driver import make_context, pool_spec
    from evomerge.pipelines.scale.plan import load_cells
    from evomerge.pipelines.scale.work import CellWorker

    plan = json.loads((run_dir / "plan.json").read_text())
    worker = CellWorker(make_context(cfg, pool_spec(cfg, zoo), run_dir))
    rows = [r for cell in load_cells(plan) for r in worker.run(cell).rows]
    t = pd.DataFrame(rows).drop(columns=["seconds"]).astype({"k": "int32", "seed": "int64"})
    return t.sort_values(["k", "method", "rht", "seed", "task", "split"], ignore_index=True)


class Killed(RuntimeError):
    """Raised by the test's callback to stop a run after some cells."""


def kill_after(n: int):
    """An ``on_cell_done`` callback that stops the run once ``n`` cells are on disk."""

    def callback(cell, n_done):
        if n_done >= n:
            raise Killed(f"stopped after {n_done} cells")

    return callback


def test_killed_run_resumes_from_finished_cells(small_zoo, tmp_path, ray_session):
    data = dict(CFG)  # the zoo is passed to run_scale
    cfg = config_from_dict(data)
    # kill the run once every cell up to k=2 could be done: base, expert, 2 k-values x 4 cells
    n_before = 2 + 2 * 4
    part = tmp_path / "part"
    with pytest.raises(Killed):
        run_scale(cfg, part, zoo=small_zoo, progress=False, on_cell_done=kill_after(n_before))
    done_before = CellStore(part).done()
    assert len(done_before) == n_before
    assert not (part / "report.md").exists()

    resumed = []
    res = run_scale(cfg, part, zoo=small_zoo, progress=False, on_cell_done=lambda cell, n: resumed.append(cell))
    n_pairs = 2 * 2  # the small zoo's one related pair and one unrelated, x 2 methods, one seed
    assert res.cells_total == 2 + 4 * 4 + n_pairs
    assert res.cells_skipped == n_before
    assert res.cells_run == res.cells_total - n_before == len(resumed)
    assert {c.id for c in resumed} | done_before == CellStore(part).done()  # nothing missed
    assert not {c.id for c in resumed} & done_before  # nothing recomputed
    assert max(c.k for c in resumed) == 4
    assert res.evaluations == 2 * len(resumed)  # validation + test per cell
    assert (part / "report.md").is_file()
    # the resumed table equals every cell computed in one go
    pd.testing.assert_frame_equal(_table(part), reference_table(cfg, small_zoo, part), check_dtype=False)
    # a finished run reruns nothing
    again = run_scale(cfg, part, zoo=small_zoo, progress=False, report=False)
    assert again.cells_run == 0 and again.evaluations == 0


def test_expert_gains_measured_once(tmp_path):
    """``expert_gains.json`` (written with sorted keys) is read back for a pool in any order: the
    experts are not scored alone a second time (they were, before the search phase, every run)."""
    from evomerge.io import write_json_atomic
    from evomerge.pipelines.scale.gains import FILE, load_or_measure

    names = ["zeta", "alpha", "mid"]  # not sorted, as a pool's order usually is not
    data = {"base": {"alpha": 0.25}, "base_cross_entropy": {"alpha": 1.5},
            "experts": {n: {"alpha": 0.5} for n in names}, "gain": {"zeta": 0.1, "alpha": None, "mid": -0.2}}
    write_json_atomic(tmp_path / FILE, data)

    def no_worker():
        raise AssertionError("the gains were measured again")

    got = load_or_measure(tmp_path, no_worker, names, ["zeta", "alpha", "mid"])
    assert got["gain"]["zeta"] == 0.1 and got["gain"]["mid"] == -0.2 and got["gain"]["alpha"] != got["gain"]["alpha"]
    with pytest.raises(AssertionError, match="measured again"):  # another pool: measured
        load_or_measure(tmp_path, no_worker, names + ["new"], names + ["new"])
