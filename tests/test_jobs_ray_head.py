"""Real Ray Jobs on a real Ray head started from a fresh HOME, as a new user would.

``clusters/local/start_head.sh`` runs with an empty temporary HOME and token authentication (it
must create the token itself), free ports and its own ``--temp-dir``. Jobs are submitted with
Ray's CLI (``ray job submit``) from a copy of the repository; their status and logs are read
from the job REST API with the token. At the end ``clusters/local/stop_head.sh`` must leave no
process of this head alive: they are found independently, by a marker variable in their
environment and the PID tree below those processes (never ``ray stop``, which would stop other
users' Ray instances).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / "clusters" / "local"
EXCLUDES = [".git", ".venv", "runs", "*.egg-info", "__pycache__"]
FINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- processes and sockets
def _ppid_table() -> dict[int, int]:
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                out[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return out


def head_processes(marker: str) -> set[int]:
    """Every process whose environment holds ``marker``, and all their descendants."""
    found = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker.encode() in (d / "environ").read_bytes():
                    found.add(int(d.name))
            except OSError:
                pass
    parents = _ppid_table()
    grew = True
    while grew:
        kids = {p for p, pp in parents.items() if pp in found} - found
        found |= kids
        grew = bool(kids)
    return found


def alive(pids) -> set[int]:
    """The non-zombie processes among ``pids``."""
    out = set()
    for p in pids:
        try:
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.add(p)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def listening(pids) -> dict[int, set[str]]:
    """``{port: {local addresses}}`` of the TCP sockets the processes ``pids`` listen on."""
    inodes = set()
    for p in pids:
        try:
            for fd in Path(f"/proc/{p}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            pass
    out: dict[int, set[str]] = {}
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] != "0A" or f[9] not in inodes:  # 0A: LISTEN
                continue
            addr_hex, port_hex = f[1].split(":")
            raw = bytes.fromhex(addr_hex)
            if v6:
                words = [raw[i:i + 4][::-1] for i in range(0, 16, 4)]
                addr = socket.inet_ntop(socket.AF_INET6, b"".join(words))
            else:
                addr = socket.inet_ntoa(raw[::-1])
            out.setdefault(int(port_hex, 16), set()).add(addr)
    return out


# ---------------------------------------------------------------- the head
@dataclass
class Head:
    dash: int
    env: dict
    token: str
    temp_dir: str
    runs: Path
    marker: str

    def api(self, path: str, token: bool = True):
        req = urllib.request.Request(f"http://127.0.0.1:{self.dash}{path}")
        if token:
            req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def status(self, job: str) -> str:
        return self.api(f"/api/jobs/{job}")["status"]

    def logs(self, job: str) -> str:
        return self.api(f"/api/jobs/{job}/logs")["logs"]

    def ray(self, *args: str, cwd: Path = ROOT, timeout: float = 300) -> str:
        res = subprocess.run(["ray", *args], env=self.env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        assert res.returncode == 0, f"ray {' '.join(args)}: {res.stdout[-2000:]}{res.stderr[-3000:]}"
        return res.stdout + res.stderr

    def submit(self, repo: Path, args: list[str]) -> str:
        """``ray job submit`` (Ray's CLI); retried while the head's job agent is still starting."""
        t0 = time.time()
        while True:
            res = subprocess.run(
                ["ray", "job", "submit", "--no-wait", "--address", f"http://127.0.0.1:{self.dash}", "--working-dir", ".",
                 "--runtime-env-json", json.dumps({"excludes": EXCLUDES}), "--", "python", *args],
                env=self.env, cwd=repo, capture_output=True, text=True, timeout=300)
            out = res.stdout + res.stderr
            m = re.search(r"Job '(raysubmit_\w+)' submitted successfully", out)
            if m:
                return m.group(1)
            if "No available agent" not in out or time.time() - t0 > 180:
                raise AssertionError(f"submission failed:\n{out[-3000:]}")
            time.sleep(2.0)

    def wait(self, job: str, timeout: float = 900, until=None) -> str:
        t0 = time.time()
        while time.time() - t0 < timeout:
            status = self.status(job)
            if status in FINAL or (until is not None and until()):
                return status
            time.sleep(1.0)
        raise TimeoutError(f"job {job} still {self.status(job)} after {timeout} s:\n{self.logs(job)[-3000:]}")


@pytest.fixture(scope="module")
def head(small_zoo):
    home = Path(tempfile.mkdtemp(prefix="fh-", dir="/tmp"))  # a new user's empty HOME
    temp_dir = tempfile.mkdtemp(prefix="rh-", dir="/tmp")  # short: Ray's socket paths have a length limit
    marker = f"EVOMERGE_TEST_HEAD={os.getpid()}-{time.time_ns()}"
    dash = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "EVOMERGE_RUNS"))}
    env.update({"HOME": str(home), "RAY_AUTH_MODE": "token", "EVOMERGE_CACHE": str(small_zoo.root.parent),
                marker.split("=")[0]: marker.split("=")[1]})
    started: set[int] = set()
    try:
        res = subprocess.run(
            [str(LOCAL / "start_head.sh"), "--port", str(free_port()), "--dashboard-port", str(dash), "--temp-dir",
             temp_dir, "--num-cpus", "2", "--num-gpus", "0", "--runs-dir", str(home / "runs"), "--free-ports"],
            env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        token_file = home / ".ray" / "auth_token"
        assert token_file.is_file() and stat.S_IMODE(token_file.stat().st_mode) == 0o600
        started = head_processes(marker)
        yield Head(dash, env, token_file.read_text().strip(), temp_dir, home / "runs", marker)
    finally:
        started |= head_processes(marker)
        subprocess.run([str(LOCAL / "stop_head.sh"), "--temp-dir", temp_dir], capture_output=True, timeout=120)
        left = alive(started | head_processes(marker))
        shutil.rmtree(temp_dir, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
        assert not left, f"stop_head.sh left processes of this head: {[(p, cmdline(p)[:120]) for p in left]}"


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A copy of the working tree (tracked and untracked files, as git sees them)."""
    dest = tmp_path_factory.mktemp("repo")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
    return dest


def evolve_config(tmp_path: Path, generations: int, max_samples: int, population: int) -> Path:
    cfg = yaml.safe_load((ROOT / "jobs" / "configs" / "evolve_small.yaml").read_text())
    cfg["genome"].update(generations=generations, early_stop_iter=generations, population=population)
    cfg["evaluation"]["max_samples"] = max_samples
    path = tmp_path / "evolve.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# ---------------------------------------------------------------- tests
def test_the_head_listens_where_the_docs_say_and_wants_the_token(head) -> None:
    ports = listening(head_processes(head.marker))
    assert ports[head.dash] == {"127.0.0.1"}, "the dashboard / job API binds to loopback only"
    gcs_port = int(Path(head.temp_dir, "ray_current_cluster").read_text().strip().rsplit(":", 1)[1])
    assert ports[gcs_port] & {"0.0.0.0", "::"}, "Ray's GCS listens on every interface (docs/distributed.md)"
    with pytest.raises(urllib.error.HTTPError) as err:
        head.api("/api/jobs/", token=False)
    assert err.value.code == 401
    assert isinstance(head.api("/api/jobs/"), list)
    assert any("ray.util.client.server" in cmdline(p) for p in head_processes(head.marker)), \
        "the Ray client server is one of this head's processes (stop_head.sh must end it)"


def test_stopped_job_resubmitted_after_a_repository_change_continues_the_same_run(head, repo, tmp_path) -> None:
    # about a second a round on an idle 2-core machine: still running when stopped after its first checkpoint
    config = evolve_config(tmp_path, generations=10, max_samples=200, population=8)
    args = ["jobs/evolve.py", "--algo", "genome", "--zoo", "small", "--config", str(config)]
    job = head.submit(repo, args)  # no --out: the run goes to $EVOMERGE_RUNS_DIR/evolve-<submission id>
    run_dir = head.runs / f"evolve-{job}"
    latest = run_dir / "checkpoints" / "LATEST"
    status = head.wait(job, until=latest.is_file)
    if status == "SUCCEEDED":
        pytest.fail("the job finished before it could be stopped; the run is too short for this test")
    head.ray("job", "stop", "--address", f"http://127.0.0.1:{head.dash}", job)
    assert head.wait(job) == "STOPPED"
    assert not (run_dir / "result.json").exists()
    step = int(re.sub(r"\D", "", latest.read_text()))
    kept = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (run_dir / "history").glob("*.parquet")
            if int(re.sub(r"\D", "", p.stem)) <= step}
    assert kept, "rounds recorded before the stop"

    (repo / "CHANGED.txt").write_text("a change after the first submission\n")  # a new upload, a new package folder
    again = head.submit(repo, args + ["--out", str(run_dir), "--resume"])
    assert head.wait(again) == "SUCCEEDED", head.logs(again)[-4000:]
    first, second = head.api(f"/api/jobs/{job}"), head.api(f"/api/jobs/{again}")
    assert first["runtime_env"]["working_dir"] != second["runtime_env"]["working_dir"], "the upload changed"
    assert f"evomerge job results: {run_dir}" in head.logs(again)
    rounds = json.loads((run_dir / "result.json").read_text())["rounds"]
    history = sorted(p.name for p in (run_dir / "history").glob("*.parquet"))
    assert history == [f"step_{i:06d}.parquet" for i in range(rounds)] and rounds > step + 1, (history, step)
    now = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (run_dir / "history").glob("*.parquet")}
    assert {k: now[k] for k in kept} == kept, "rounds before the stop were kept, not recomputed"


def test_relative_out_and_resume_of_a_missing_run_are_refused(head, repo, tmp_path) -> None:
    config = evolve_config(tmp_path, generations=2, max_samples=16, population=4)
    base = ["jobs/evolve.py", "--algo", "genome", "--zoo", "small", "--config", str(config)]
    rel = head.submit(repo, base + ["--out", "runs/x"])
    missing = head.submit(repo, base + ["--out", str(tmp_path / "nothing-here"), "--resume"])
    assert head.wait(rel) == "FAILED"
    assert "--out 'runs/x' is relative" in head.logs(rel) and "package folder" in head.logs(rel)
    assert head.wait(missing) == "FAILED"
    assert f"--resume: no run at {tmp_path / 'nothing-here'}" in head.logs(missing)
    assert not (tmp_path / "nothing-here").exists()


def test_tune_job_runs_two_workers_on_one_study(head, repo, tmp_path) -> None:
    import optuna

    cfg = yaml.safe_load((ROOT / "jobs" / "configs" / "tune_small.yaml").read_text())
    cfg["tune"]["n_trials"] = 4
    cfg["evaluation"]["max_samples"] = 16
    config = tmp_path / "tune.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "study"
    job = head.submit(repo, ["jobs/tune.py", "--workers", "2", "--config", str(config), "--small", "--out", str(run)])
    assert head.wait(job) == "SUCCEEDED", head.logs(job)[-4000:]
    study = optuna.load_study(study_name="evomerge", storage=f"sqlite:///{run}/optuna.db")
    finished = [t for t in study.trials if t.state.is_finished()]
    assert 4 <= len(finished) <= 5
    assert len({t.user_attrs["worker"] for t in finished}) == 2, "both Ray tasks ran trials"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_value"] == pytest.approx(study.best_value)
    assert (run / "best_config.yaml").is_file() and (run / "trials.parquet").is_file()
    assert not list(run.glob("worker-*")), "each worker removed its working folder"
    assert f"evomerge job results: {run}" in head.logs(job)


def test_scale_job_to_a_uri_and_a_resubmission_resumes(head, repo, tmp_path) -> None:
    import pyarrow.parquet as pq

    uri = f"file://{tmp_path}/out/s1"
    job = head.submit(repo, ["jobs/scale.py", "--config", "jobs/configs/scale_small.yaml", "--small", "--out", uri])
    assert head.wait(job) == "SUCCEEDED", head.logs(job)[-4000:]
    run = tmp_path / "out" / "s1"
    assert f"evomerge job results: {run}" in head.logs(job)
    scores = pq.read_table(run / "tables" / "scores.parquet").to_pandas()
    assert set(scores["method"]) >= {"task_arithmetic", "ties"} and scores["k"].max() >= 2
    assert (run / "report.md").is_file()
    job = head.submit(repo, ["jobs/scale.py", "--small", "--out", uri, "--resume"])
    assert head.wait(job) == "SUCCEEDED", head.logs(job)[-4000:]
    assert "scale: 0 cells run" in head.logs(job)  # every cell was already on disk
