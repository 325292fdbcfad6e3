"""``jobs/tune.py`` with a ``ray.address`` where no head listens: one ``error:`` line naming the
key, exit code 2, no traceback (the connect error came out of the job's runner as a traceback)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_an_unreachable_ray_address_is_one_error_line(tmp_path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "tune.yaml"
    cfg.write_text(f"ray: {{address: '127.0.0.1:{port}'}}\n"
                   "tune:\n  n_trials: 1\n  space:\n    merge.params.lambda: {type: float, low: 0.1, high: 1.0}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("EVOMERGE_RUNS_DIR", "RAY_JOB_CONFIG_JSON_ENV_VAR")}
    proc = subprocess.run([sys.executable, "jobs/tune.py", "--workers", "1", "--config", str(cfg), "--small",
                           "--out", str(tmp_path / "out")], cwd=ROOT, env=env, text=True, capture_output=True,
                          timeout=300)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert len(errors) == 1 and "`ray.address`" in errors[0] and f"127.0.0.1:{port}" in errors[0], errors
