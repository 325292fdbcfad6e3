"""SIGTERM to the whole process group, as ``timeout`` and job schedulers send it: the local Ray
evomerge starts lives in a session of its own, so the signal reaches the driver alone, which
stops Ray itself and exits 143 with its one line within seconds. (With Ray in the driver's
group the signal killed Ray first; the driver then waited a minute for its GCS and exited 1.)"""

from __future__ import annotations

import os
import signal

import pytest
import yaml

pytest.importorskip("psutil")

from _signal_helpers import check_stopped, has, interrupt, start  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.mark.parametrize("address", [None, "local"])
def test_local_ray_runs_in_a_session_of_its_own(address):
    import psutil
    import ray

    from evomerge.config import RayConfig
    from evomerge.distributed.cluster import connect, disconnect

    started = connect(RayConfig(address=address))
    try:
        ours = {p.pid: p for p in psutil.Process().children(recursive=True)}
        ray_procs = [p for p in ours.values() if p.name() in ("gcs_server", "raylet")]
        assert {p.name() for p in ray_procs} == {"gcs_server", "raylet"}
        assert all(os.getsid(p.pid) != os.getsid(0) for p in ray_procs)
        assert ray.get(ray.remote(lambda: 1 + 1).remote()) == 2
    finally:
        disconnect(started)
    gone, alive = psutil.wait_procs(ray_procs, timeout=10)
    assert alive == []


def test_ray_outside_the_group_still_dies_with_a_killed_driver():
    """SIGKILL to the driver's group no longer reaches Ray's processes: the kernel ends the GCS
    and the raylet when the driver dies (Ray's fate sharing), and the raylet's workers with it.
    Its two agents try to tell the dead GCS first and end about a minute later, as after any
    driver killed alone: Ray's own behaviour, not waited for here."""
    import subprocess
    import sys
    import time

    import psutil

    code = ("from evomerge.config import RayConfig; from evomerge.distributed.cluster import connect; "
            "connect(RayConfig()); print('up', flush=True); import time; time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        time.sleep(1.0)  # Ray's workers start after ray.init returns
        ray_procs = psutil.Process(proc.pid).children(recursive=True)
        assert {"gcs_server", "raylet"} <= {p.name() for p in ray_procs}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    agents = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")
    names = {p.pid: p.name() for p in ray_procs}
    gone, alive = psutil.wait_procs([p for p in ray_procs if names[p.pid] not in agents], timeout=20)
    for p in ray_procs:  # leave the machine clean whatever the verdict
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    assert [names[p.pid] for p in alive] == []
    assert {names[p.pid] for p in gone} >= {"gcs_server", "raylet"}


def test_scale_stops_cleanly_on_sigterm_to_its_group(tmp_path, small_zoo):
    cfg = tmp_path / "scale.yaml"
    cfg.write_text(yaml.safe_dump({
        "evaluation": {"max_samples": 8, "batch_size": 8},
        "scale": {"methods": ["task_arithmetic"], "search": ["genome"], "seeds": [0], "with_rht": False,
                  "k_max": 4, "law_first_k": 3, "pairs": False, "order": "given"},
        "genome": {"population": 3, "generations": 2, "early_stop_iter": 1},
        "ray": {"num_actors": 1},
    }))
    out = tmp_path / "run"
    proc = start("scale", "--small", "--config", str(cfg), "--out", str(out), "--no-progress")
    ready = has("raylet")
    seen, seconds, _, err = interrupt(
        proc, signal.SIGTERM, lambda seen: ready(seen) and (out / "cells").is_dir(), group=True)
    line = check_stopped(proc, seen, seconds, err, 143, out)
    assert line == f"interrupted; resume with: evomerge scale --out {out} --resume"


@pytest.mark.slow  # default suite: the group's SIGTERM in test_scale_stops_cleanly_on_sigterm_to_its_group (the same
# cluster.connect start, Ray in a session of its own) and evolve's SIGTERM in test_cli_interrupt.py and test_jobs_interrupt.py
def test_evolve_stops_cleanly_on_sigterm_to_its_group(tmp_path, small_zoo):
    cfg = tmp_path / "evolve.yaml"
    cfg.write_text(yaml.safe_dump({"evaluation": {"max_samples": 8, "batch_size": 8},
                                   "genome": {"population": 4, "generations": 6}}))
    out = tmp_path / "run"
    proc = start("evolve", "--algo", "genome", "--small", "--config", str(cfg), "--out", str(out), "--actors", "1")
    seen, seconds, _, err = interrupt(
        proc, signal.SIGTERM, lambda seen: (out / "checkpoints" / "LATEST").is_file(), group=True)
    line = check_stopped(proc, seen, seconds, err, 143, out)
    assert line.startswith("interrupted: evomerge evolve") and line.endswith("--resume")
