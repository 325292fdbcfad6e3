"""RayCellRunner on real Ray (two actors, the small zoo): every cell comes back once, with the
scores the same CellWorker work gives in this process, and while the caller handles a result
every actor already computes its next cell (an actor sat idle while the driver wrote the
finished cell's files before)."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")


@pytest.mark.ray
def test_runner_streams_every_cell_once_and_keeps_every_actor_busy(small_zoo, tmp_path):
    from evomerge.config import config_from_dict
    from evomerge.pipelines.scale.driver import make_context, pool_spec
    from evomerge.pipelines.scale.execute import RayCellRunner
    from evomerge.pipelines.scale.plan import Cell
    from evomerge.pipelines.scale.work import CellWorker

    cfg = config_from_dict({"evaluation": {"max_samples": 8, "batch_size": 8},
                            "ray": {"num_actors": 2, "cpus_per_actor": 1}})
    ctx = make_context(cfg, pool_spec(cfg, small_zoo), tmp_path)
    cells = [Cell("base", 0, "base", False, 0, (0,), ())]
    cells += [Cell("expert", 1, "expert", False, 0, (0,), (0,))]
    cells += [Cell("merge", k, m, False, 0, (0,), tuple(range(k))) for k in (2, 3) for m in ("task_arithmetic", "ties")]
    got, in_flight = {}, []
    with RayCellRunner(ctx, cfg.ray) as runner:
        assert len(runner.actors) == 2
        for n, (cell, out) in enumerate(runner.run(cells), start=1):
            assert cell.id not in got
            got[cell.id] = out
            in_flight.append(runner.in_flight)
    assert set(got) == {c.id for c in cells}
    # at each result the cells still to come are on the actors: both, until fewer remain
    assert in_flight == [min(2, len(cells) - n) for n in range(1, len(cells) + 1)]
    local = CellWorker(ctx)  # the same work in this process: the same scores
    for cell in cells:
        want = {(r["task"], r["split"]): r["score"] for r in local.run(cell).rows}
        assert {(r["task"], r["split"]): r["score"] for r in got[cell.id].rows} == pytest.approx(want, abs=1e-6)
