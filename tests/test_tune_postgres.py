"""One evomerge study in a real PostgreSQL server started on loopback by the test.

The server runs from a temp dir on a free port with password authentication; the password
reaches the storage URL only through ``${EVO_TEST_PG_PASSWORD}`` and never shows in outputs.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

INITDB = shutil.which("initdb") or "/usr/local/bin/initdb"
PG_CTL = shutil.which("pg_ctl") or "/usr/local/bin/pg_ctl"

pytestmark = pytest.mark.skipif(
    not (os.path.exists(INITDB) and os.path.exists(PG_CTL)),
    reason="PostgreSQL server binaries (initdb, pg_ctl) are not installed",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: use the `postgres` account then."""
    if os.geteuid() != 0:
        return cmd
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root and `runuser` is missing, so PostgreSQL cannot be started")
    return [runuser, "-u", "postgres", "--", *cmd]


@pytest.fixture(scope="module")
def postgres():
    tmp = Path(tempfile.mkdtemp(prefix="evopg-"))
    password = secrets.token_hex(12)
    port = free_port()
    data = tmp / "data"
    (tmp / "pw").write_text(password)
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres")
        shutil.chown(tmp / "pw", "postgres")
    subprocess.run(_as_server_user([INITDB, "-D", str(data), "-U", "evomerge", "-A", "scram-sha-256",
                                    f"--pwfile={tmp / 'pw'}"]), check=True, capture_output=True, timeout=120)
    opts = f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1"
    subprocess.run(_as_server_user([PG_CTL, "-D", str(data), "-o", opts, "-l", str(tmp / "log"), "-w", "start"]),
                   check=True, capture_output=True, timeout=120)
    try:
        yield {"port": port, "password": password}
    finally:
        subprocess.run(_as_server_user([PG_CTL, "-D", str(data), "-m", "immediate", "stop"]), capture_output=True,
                       timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


def test_study_in_postgres_with_password_from_the_environment(postgres, tmp_path, monkeypatch) -> None:
    import optuna

    from evomerge.config import config_from_dict
    from evomerge.pipelines.tune.run import run_tune
    from evomerge.zoo import ensure_zoo

    ensure_zoo("small")
    monkeypatch.setenv("EVO_TEST_PG_PASSWORD", postgres["password"])
    template = f"postgresql://evomerge:${{EVO_TEST_PG_PASSWORD}}@127.0.0.1:{postgres['port']}/postgres"
    cfg = config_from_dict({
        "merge": {"method": "ties"},
        "evaluation": {"max_samples": 24},
        "tune": {"storage": template, "study_name": "pg-study", "n_trials": 3, "sampler": "random",
                 "space": {"merge.params.density": {"low": 0.2, "high": 1.0}}},
    })
    lines: list[str] = []
    res = run_tune(cfg, tmp_path / "run", small=True, log=lines.append)
    assert res.states == {"COMPLETE": 3}

    url = template.replace("${EVO_TEST_PG_PASSWORD}", postgres["password"])
    study = optuna.load_study(study_name="pg-study", storage=url.replace("postgresql://", "postgresql+psycopg2://"))
    assert len(study.trials) == 3 and study.best_value == pytest.approx(res.best_value)
    assert study.user_attrs["default_validation_fitness"] == pytest.approx(res.default_fitness)

    summary = (tmp_path / "run" / "summary.json").read_text()
    assert postgres["password"] not in summary and postgres["password"] not in "\n".join(lines)
    # an environment-expanded secret is written as the reference it came from, never its value
    assert json.loads(summary)["storage"] == f"postgresql://evomerge:${{EVO_TEST_PG_PASSWORD}}@127.0.0.1:{postgres['port']}/postgres"

    # A wrong password is a clear error before any trial starts.
    monkeypatch.setenv("EVO_TEST_PG_PASSWORD", "not-the-pw-9f3a")
    from evomerge.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot be reached") as err:
        run_tune(cfg, tmp_path / "run2", resume=True, small=True, log=lambda m: None)
    assert "not-the-pw-9f3a" not in str(err.value)
