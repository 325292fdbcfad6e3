"""Interrupting ``evomerge scale`` (Ctrl-C to the driver alone, SIGTERM as a cluster cancels a
job), as real subprocesses on the small zoo with a real Ray: the run stops within seconds with
exit code 130 / 143 and one line saying how to resume, no process it started survives, no
atomic writer's temporary file is left, and ``--resume`` finishes with the scores of an
uninterrupted run."""

from __future__ import annotations

import signal

import pytest
import yaml

pytest.importorskip("psutil")

from _signal_helpers import check_stopped as _check_stopped, has as _has, interrupt as _interrupt, start  # noqa: E402

pytestmark = pytest.mark.ray

CONFIG = {
    "evaluation": {"max_samples": 8, "batch_size": 8},
    "scale": {"methods": ["task_arithmetic", "ties"], "search": ["genome", "swarm"], "seeds": [0, 1],
              "with_rht": False, "k_max": 4, "law_first_k": 3, "pairs": False, "order": "given",
              "hist_samples": 20},
    "genome": {"population": 3, "generations": 2, "early_stop_iter": 1},
    "swarm": {"max_iter": 2, "patience": 1},
    "ray": {"num_actors": 2},
}


@pytest.fixture(scope="module")
def config_file(tmp_path_factory, small_zoo):  # small_zoo: the zoo is built (once) before any timing
    path = tmp_path_factory.mktemp("cfg") / "scale.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def _start(out, config_file, *extra):
    config = ["--config", str(config_file)] if config_file is not None else []
    return start("scale", "--small", *config, "--out", str(out), "--no-progress", *extra)


def test_sigint_during_startup_stops_the_prewarmed_child(tmp_path, config_file):
    """Ctrl-C reaching only the driver while it does its imports (the analysis's child, started
    first, does its own): the child is ended, nothing to resume."""
    out = tmp_path / "run"
    proc = _start(out, config_file)
    seen, seconds, _, err = _interrupt(proc, signal.SIGINT, lambda seen: len(seen) >= 1)
    line = _check_stopped(proc, seen, seconds, err, 130, out)
    assert line in ("interrupted before the run directory was written; nothing to resume (start the run again)",
                    f"interrupted; resume with: evomerge scale --out {out} --resume")


def test_sigint_during_ray_start_leaves_no_ray_process(tmp_path, config_file):
    """Ctrl-C to the driver alone while ``ray.init`` starts its GCS and raylet."""
    out = tmp_path / "run"
    proc = _start(out, config_file)
    seen, seconds, _, err = _interrupt(proc, signal.SIGINT, _has("gcs_server"))
    line = _check_stopped(proc, seen, seconds, err, 130, out)
    assert line == f"interrupted; resume with: evomerge scale --out {out} --resume"
    from evomerge.pipelines.scale.interrupt import recorded_zoo

    assert recorded_zoo(out) == "small"  # the plan is not written yet: --resume (no --small) still finds the zoo


def _searching(out):
    return lambda seen: (out / "search").is_dir() and any((out / "search").iterdir())


def test_sigterm_mid_searches_stops_cleanly(tmp_path, config_file):
    """SIGTERM (a cluster cancelling the job) while searches and cells are in flight."""
    out = tmp_path / "run"
    proc = _start(out, config_file)
    seen, seconds, _, err = _interrupt(proc, signal.SIGTERM, _searching(out))
    line = _check_stopped(proc, seen, seconds, err, 143, out)
    assert line == f"interrupted; resume with: evomerge scale --out {out} --resume"
    assert any(p.seen_as == "raylet" for p in seen.values())  # Ray was up: its processes were checked


def _scores(run):
    from evomerge.pipelines.scale.store import CellStore

    t = CellStore(run).scores().to_pandas().drop(columns=["seconds"])
    return t.sort_values(list(t.columns), ignore_index=True)


@pytest.fixture(scope="module")
def reference_scores(tmp_path_factory, config_file):
    """The scores of an uninterrupted run of the same command."""
    ref = tmp_path_factory.mktemp("ref") / "run"
    full = _start(ref, config_file)
    _, err = full.communicate(timeout=600)
    assert full.returncode == 0, err
    return _scores(ref)


@pytest.mark.slow
@pytest.mark.parametrize("sig,code,moment", [(signal.SIGINT, 130, "searches"), (signal.SIGTERM, 143, "searches"),
                                             (signal.SIGINT, 130, "ray start")])
def test_interrupted_run_resumes_to_the_uninterrupted_scores(tmp_path, config_file, reference_scores, sig, code, moment):
    """Interrupted mid-searches (or before the plan exists), then ``--resume`` as the message
    says (no zoo flag): every score equals an uninterrupted run's."""
    out = tmp_path / "run"
    proc = _start(out, config_file)
    seen, seconds, _, err = _interrupt(proc, sig, _searching(out) if moment == "searches" else _has("gcs_server"))
    _check_stopped(proc, seen, seconds, err, code, out)
    again = _start(out, None, "--resume")
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    done = _scores(out)
    assert len(done) == len(reference_scores) and done.equals(reference_scores)
    assert (out / "report.md").is_file()
