"""Population actors start with no object-store constructor arguments, so Ray can always restart
them: no "constructor arguments in the object store and max_restarts > 0" error, and a killed
actor comes back (a new process) and scores exactly as before, its experts re-sent by the pool."""

from __future__ import annotations

import os
import signal
import time

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

RAY_ERROR = "constructor arguments in the object store"


def test_killed_actor_restarts_and_scores_the_same(small_zoo, capfd) -> None:
    import ray

    from evomerge.config import config_from_dict
    from evomerge.pipelines.inputs import prepare_inputs
    from evomerge.distributed.runtime import Runtime
    from evomerge.search import Recipe, expert_id

    names = list(small_zoo.tasks[:2])
    cfg = config_from_dict({"seed": 0, "evaluation": {"max_samples": 16},
                            "ray": {"num_actors": 1, "cpus_per_actor": 1, "max_restarts": 1}})
    ray.init(address="local", num_cpus=1, num_gpus=0, include_dashboard=False, log_to_driver=False)
    try:
        with Runtime(cfg) as rt:
            pool = rt.start(prepare_inputs(cfg, experts=names, tasks=names))
            recipe = Recipe("m1", "init_pair", (expert_id(0), expert_id(1)), (0.4, 0.6), {"method": "linear"}, seed=1)
            before = pool.evaluate([recipe])["m1"]
            pid = pool.pids[0]
            os.kill(pid, signal.SIGKILL)
            t0 = time.time()
            while time.time() - t0 < 60:  # the process is gone (a zombie counts as gone)
                try:
                    if open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
                        break
                except FileNotFoundError:
                    break
                time.sleep(0.1)
            again = Recipe("m2", "init_pair", (expert_id(0), expert_id(1)), (0.4, 0.6), {"method": "linear"}, seed=1)
            after = pool.evaluate([again])["m2"]
            assert pool.restarts == [1] and pool.pids[0] != pid
            assert after.fitness == pytest.approx(before.fitness, abs=1e-12)
            assert after.per_task == pytest.approx(before.per_task, abs=1e-12)
    finally:
        ray.shutdown()
    err = capfd.readouterr().err
    assert RAY_ERROR not in err
