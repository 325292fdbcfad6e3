"""The optuna-dashboard command evomerge prints opens the study, run exactly as printed (plus a
free port) in a shell: SQLite, a journal file, and PostgreSQL with the password only in
``$PGPASSWORD``. The dashboard's own API on loopback must list the study and its trials."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

pytest.importorskip("optuna_dashboard")
DASHBOARD = shutil.which("optuna-dashboard")
pytestmark = pytest.mark.skipif(DASHBOARD is None, reason="the optuna-dashboard command is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_study(storage, name: str, n: int = 3):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=n)
    return study


def studies_seen_by(command: str, env: dict | None = None, timeout_s: float = 120.0) -> dict[str, int]:
    """Run ``command --port P`` in a shell; ``{study name: number of trials}`` from its API."""
    port = free_port()
    proc = subprocess.Popen(f"exec {command} --port {port} --host 127.0.0.1", shell=True, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    def get(path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
            return json.loads(r.read())

    try:
        t0 = time.time()
        while True:
            try:
                data = get("/api/studies")
                break
            except OSError:
                if proc.poll() is not None or time.time() - t0 > timeout_s:
                    out = proc.stdout.read().decode(errors="replace") if proc.poll() is not None else ""
                    raise AssertionError(f"`{command}` did not serve the study (exit {proc.poll()}):\n{out[-3000:]}")
                time.sleep(0.5)
        return {s["study_name"]: len(get(f"/api/studies/{s['study_id']}")["trials"]) for s in data["study_summaries"]}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_sqlite_command_opens_the_study(tmp_path) -> None:
    from evomerge.pipelines.tune.dashboard import dashboard_command, password_hint

    url = f"sqlite:///{tmp_path / 'a dir' / 'optuna.db'}"  # a space: the command must quote
    (tmp_path / "a dir").mkdir()
    make_study(url, "sq")
    cmd = dashboard_command(url)
    assert cmd.startswith("optuna-dashboard ") and password_hint(url) == ""
    assert studies_seen_by(cmd) == {"sq": 3}


def test_journal_command_opens_the_study(tmp_path) -> None:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from evomerge.pipelines.tune.dashboard import dashboard_command

    path = tmp_path / "study.log"
    make_study(JournalStorage(JournalFileBackend(str(path))), "jr", n=2)
    assert studies_seen_by(dashboard_command(f"journal://{path}")) == {"jr": 2}


@pytest.mark.slow  # about 20 s with the server's start and stop
def test_postgres_command_has_no_password_and_opens_the_study(postgres) -> None:
    from evomerge.storage_uri import mask_uri
    from evomerge.pipelines.tune.dashboard import dashboard_command, password_hint

    pw = postgres["password"]
    url = f"postgresql://evomerge:{pw}@127.0.0.1:{postgres['port']}/postgres?sslmode=disable&password={pw}"
    make_study(url.replace("postgresql://", "postgresql+psycopg2://").split("&password")[0], "pg")
    for given in (url, mask_uri(url)):  # from the real URL or the masked one that evomerge prints
        cmd = dashboard_command(given)
        assert pw not in cmd and "***" not in cmd and "postgresql+psycopg2://evomerge@127.0.0.1" in cmd
        assert "PGPASSWORD" in password_hint(given)
    assert studies_seen_by(cmd, env={"PGPASSWORD": pw}) == {"pg": 3}


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server on loopback with password authentication (as tests/test_tune_postgres.py)."""
    mod = pytest.importorskip("test_tune_postgres")
    if not (os.path.exists(mod.INITDB) and os.path.exists(mod.PG_CTL)):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    yield from mod.postgres.__wrapped__()
