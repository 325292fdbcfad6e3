"""Real Ray Jobs on a real local Ray head (started with clusters/local/start_head.sh).

The head runs on 127.0.0.1 with free ports, its own --temp-dir and RAY_AUTH_MODE=disabled
(loopback only); it is stopped at the end by clusters/local/stop_head.sh, which kills only the
processes of this head (never `ray stop`, which would stop other users' Ray instances).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / "clusters" / "local"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head():
    temp_dir = tempfile.mkdtemp(prefix="rh-", dir="/tmp")  # short: Ray's socket paths have a length limit
    port, dash = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    try:
        subprocess.run(
            [str(LOCAL / "start_head.sh"), "--port", str(port), "--dashboard-port", str(dash), "--temp-dir", temp_dir,
             "--num-cpus", "2", "--num-gpus", "0", "--auth", "disabled", "--free-ports"],
            check=True, env=env, capture_output=True, text=True, timeout=180,
        )
        from ray.job_submission import JobSubmissionClient

        before = os.environ.get("RAY_AUTH_MODE")
        os.environ["RAY_AUTH_MODE"] = "disabled"  # the SDK reads it too
        try:
            yield JobSubmissionClient(f"http://127.0.0.1:{dash}")
        finally:
            if before is None:
                os.environ.pop("RAY_AUTH_MODE", None)
            else:
                os.environ["RAY_AUTH_MODE"] = before
    finally:
        subprocess.run([str(LOCAL / "stop_head.sh"), "--temp-dir", temp_dir], capture_output=True, timeout=60)
        time.sleep(1.0)
        left = processes_mentioning(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"stop_head.sh left processes of this head running: {left}"


def processes_mentioning(text: str) -> list[int]:
    """PIDs of live (non-zombie) processes whose command line contains ``text``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (d / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if text in cmd and state != "Z":
            out.append(int(d.name))
    return out


def submit(client, args: list[str], env_vars: dict | None = None) -> str:
    """Submit a job; retries while the head's job agent is still starting (slow on a busy machine)."""
    t0 = time.time()
    while True:
        try:
            return client.submit_job(
                entrypoint=" ".join([sys.executable, *args]),
                runtime_env={"working_dir": str(ROOT), "excludes": [".git", "runs", "*.egg-info", "__pycache__"],
                             "env_vars": {"RAY_AUTH_MODE": "disabled", **(env_vars or {})}},
            )
        except RuntimeError as err:
            if "No available agent" not in str(err) or time.time() - t0 > 180:
                raise
            time.sleep(2.0)


def wait(client, job_id: str, timeout: float = 600, until=None) -> str:
    from ray.job_submission import JobStatus

    t0 = time.time()
    while time.time() - t0 < timeout:
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return status
        if until is not None and until():
            return status
        time.sleep(1.0)
    raise TimeoutError(f"job {job_id} still {client.get_job_status(job_id)} after {timeout} s:\n{client.get_job_logs(job_id)}")


def small_evolve_config(tmp_path: Path, generations: int, max_samples: int = 24, population: int = 4) -> Path:
    cfg = yaml.safe_load((ROOT / "jobs" / "configs" / "evolve_small.yaml").read_text())
    cfg["genome"]["generations"] = generations
    cfg["genome"]["early_stop_iter"] = generations
    cfg["genome"]["population"] = population
    cfg["evaluation"]["max_samples"] = max_samples
    path = tmp_path / "evolve.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_evolve_job_writes_results_to_a_uri_and_resumes_after_being_stopped(head, tmp_path) -> None:
    from ray.job_submission import JobStatus

    # long enough (about a second a round on an idle 2-core machine) that the job is still
    # running when it is stopped right after its first checkpoint
    config = small_evolve_config(tmp_path, generations=10, max_samples=200, population=8)
    out_uri = f"file://{tmp_path}/results"
    # 1) an uninterrupted run: the reference
    job = submit(head, ["jobs/evolve.py", "--config", str(config), "--small", "--output", out_uri, "--name", "ref"])
    assert wait(head, job) == JobStatus.SUCCEEDED, head.get_job_logs(job)
    logs = head.get_job_logs(job)
    assert f"evomerge job results: {out_uri}/ref" in logs
    ref = json.loads((tmp_path / "results" / "ref" / "result.json").read_text())
    assert (tmp_path / "results" / "ref" / "history.parquet").is_file()

    # 2) the same run, stopped once its first checkpoint is on disk, then resubmitted with --resume
    run_dir = tmp_path / "results" / "cut"
    job = submit(head, ["jobs/evolve.py", "--config", str(config), "--small", "--output", out_uri, "--name", "cut"])
    status = wait(head, job, until=lambda: (run_dir / "checkpoints" / "LATEST").is_file())
    if status == JobStatus.SUCCEEDED:
        pytest.fail("the job finished before it could be stopped; the run is too short for this test")
    head.stop_job(job)
    assert wait(head, job) == JobStatus.STOPPED
    assert not (run_dir / "result.json").exists()
    job = submit(head, ["jobs/evolve.py", "--config", str(config), "--small", "--output", out_uri, "--name", "cut",
                        "--resume"])
    assert wait(head, job) == JobStatus.SUCCEEDED, head.get_job_logs(job)
    cut = json.loads((run_dir / "result.json").read_text())
    assert cut["best_fitness"] == pytest.approx(ref["best_fitness"], abs=1e-9)
    assert cut["best_id"] == ref["best_id"]


def test_bad_config_fails_the_job_with_a_clear_message(head, tmp_path) -> None:
    from ray.job_submission import JobStatus

    bad = tmp_path / "bad.yaml"
    bad.write_text("genome:\n  cross_rate: 1.5\n")
    job = submit(head, ["jobs/evolve.py", "--config", str(bad), "--output", str(tmp_path / "o")])
    assert wait(head, job, timeout=180) == JobStatus.FAILED
    assert "genome.cross_rate" in head.get_job_logs(job)


def test_tune_job_runs_two_workers_on_one_study(head, tmp_path) -> None:
    import optuna
    from ray.job_submission import JobStatus

    cfg = yaml.safe_load((ROOT / "jobs" / "configs" / "tune_small.yaml").read_text())
    cfg["tune"]["n_trials"] = 4
    cfg["evaluation"]["max_samples"] = 16
    config = tmp_path / "tune.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out_uri = f"file://{tmp_path}/results"
    job = submit(head, ["jobs/tune.py", "--config", str(config), "--small", "--output", out_uri, "--name", "study",
                        "--workers", "2"])
    assert wait(head, job) == JobStatus.SUCCEEDED, head.get_job_logs(job)
    run = tmp_path / "results" / "study"
    study = optuna.load_study(study_name="evomerge", storage=f"sqlite:///{run}/optuna.db")
    finished = [t for t in study.trials if t.state.is_finished()]
    assert 4 <= len(finished) <= 5
    assert len({t.user_attrs["worker"] for t in finished}) == 2, "both Ray tasks ran trials"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_value"] == pytest.approx(study.best_value)
    assert (run / "best_config.yaml").is_file() and (run / "trials.parquet").is_file()
    assert f"evomerge job results: {out_uri}/study" in head.get_job_logs(job)


def test_scale_job_writes_its_tables_and_a_resubmission_resumes(head, tmp_path) -> None:
    import pyarrow.parquet as pq
    from ray.job_submission import JobStatus

    args = ["jobs/scale.py", "--config", "jobs/configs/scale_small.yaml", "--small", "--output", str(tmp_path / "out"),
            "--name", "s1"]
    job = submit(head, args)
    assert wait(head, job) == JobStatus.SUCCEEDED, head.get_job_logs(job)
    run = tmp_path / "out" / "s1"
    assert f"evomerge job results: {run}" in head.get_job_logs(job)
    scores = pq.read_table(run / "tables" / "scores.parquet").to_pandas()
    assert set(scores["method"]) >= {"task_arithmetic", "ties"} and scores["k"].max() >= 2
    assert (run / "report.md").is_file() and (run / "figures" / "fitness_vs_k.png").is_file()
    job = submit(head, args + ["--resume"])
    assert wait(head, job) == JobStatus.SUCCEEDED, head.get_job_logs(job)
    assert "0 run," in head.get_job_logs(job)  # every cell was already on disk
