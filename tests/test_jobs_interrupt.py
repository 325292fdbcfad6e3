"""The Ray job scripts run directly (``python jobs/NAME.py ...``), Ctrl-C (SIGINT) / SIGTERM: as
the ``evomerge`` CLI, exit 130 / 143, one line saying what stopped with the job's own resume
command, no traceback, no process the job started left behind (the local Ray it started is
stopped, its agents included). Real subprocesses on the small zoo."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

psutil = pytest.importorskip("psutil")

from _signal_helpers import check_stopped, interrupt  # noqa: E402

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[1]

TUNE = {"seed": 0, "merge": {"method": "task_arithmetic", "params": {"lambda": 1.0}},
        "evaluation": {"max_samples": 8, "batch_size": 8},
        "tune": {"space": {"merge.params.lambda": {"low": 0.2, "high": 1.2}}, "sampler": "random"}}
EVOLVE = {"evaluation": {"max_samples": 8, "batch_size": 8, "tasks": ["rev_digits", "sort_digits"]},
          "genome": {"population": 3, "generations": 20, "early_stop_iter": 100, "space": "ab"}}


def start_job(script: str, *args: str) -> subprocess.Popen:
    """``python jobs/SCRIPT ARGS`` from the repository root, in a new session (a signal reaches
    the driver only, as ``kill`` does)."""
    return subprocess.Popen([sys.executable, f"jobs/{script}", *map(str, args)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _trials(url, states):
    import optuna

    from evomerge.pipelines.tune.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = optuna.load_study(study_name="evomerge", storage=open_storage(url))
    except Exception:  # noqa: BLE001 - not created yet
        return []
    return [t for t in study.get_trials(deepcopy=False) if t.state.name in states]


# SIGTERM to a job in the default suite: test_evolve_job_interrupted_gives_the_jobs_resume_command
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow)])
def test_tune_job_interrupted_gives_one_line_and_leaves_no_ray(tmp_path, small_zoo, sig, code):
    """Signalled while its two workers run trials: the job's line and resume command, and Ray's
    processes (GCS, raylet, dashboard and runtime-env agents, workers) gone with it."""
    cfg = tmp_path / "tune.yaml"
    cfg.write_text(yaml.safe_dump(TUNE))
    out = tmp_path / "tune"
    url = f"sqlite:///{out / 'optuna.db'}"
    args = ["--workers", "2", "--config", str(cfg), "--small", "--n-trials", "300", "--out", str(out)]
    proc = start_job("tune.py", *args)
    seen, seconds, _, err = interrupt(proc, sig, lambda seen: len(_trials(url, ("RUNNING", "COMPLETE"))) >= 1,
                                      poll=0.3)
    line = check_stopped(proc, seen, seconds, err, code, out)
    assert any(p.seen_as == "raylet" for p in seen.values())  # Ray was up: its processes were checked
    assert line == ("interrupted: tune job (what it finished stays in " + str(out) + "); resume with: "
                    + shlex.join(["python", "jobs/tune.py", *args, "--resume"]))
    # a trial a worker had in flight may stay RUNNING when the cancel comes mid-trial (see the report)


def test_evolve_job_interrupted_gives_the_jobs_resume_command(tmp_path, small_zoo):
    """SIGTERM after the first checkpoint: the CLI's line, with the job's resume command."""
    cfg = tmp_path / "evolve.yaml"
    cfg.write_text(yaml.safe_dump(EVOLVE))
    out = tmp_path / "run"
    args = ["--algo", "genome", "--small", "--config", str(cfg), "--actors", "1", "--out", str(out)]
    proc = start_job("evolve.py", *args)
    seen, seconds, _, err = interrupt(proc, signal.SIGTERM, lambda seen: (out / "checkpoints" / "LATEST").is_file())
    line = check_stopped(proc, seen, seconds, err, 143, out)
    assert line == (f"interrupted: evomerge evolve (the finished rounds stay in {out}); resume with: "
                    + shlex.join(["python", "jobs/evolve.py", *args, "--resume"]))
    assert sum(ln.startswith("interrupted") for ln in err.splitlines()) == 1


def test_scale_job_resume_command_drops_what_resume_refuses():
    sys.path.insert(0, str(ROOT / "jobs"))
    import _common

    cmd = _common.job_command("scale", ["--config", "c.yaml", "--small", "--set", "a=1", "--out", "/r/s"], "/r/s",
                              resume=True)
    assert cmd.endswith("jobs/scale.py --small --out /r/s --resume")
    cmd = _common.job_command("evolve", ["--algo", "genome"], "/runs/evolve-9", resume=True)
    assert cmd.endswith("jobs/evolve.py --algo genome --out /runs/evolve-9 --resume")
