"""``jobs/tune.py`` leaves in ``--out`` what ``evomerge tune`` leaves there (the study, its tables,
figures, best config and summary) and nothing else: each worker works in ``OUT/worker-<i>`` (its
GENOME/Swarm trials' run folders) and removes it when it ends. Before the fix ``worker-0/`` and
``worker-1/`` stayed, each a full copy of the outputs at the time that worker ended."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[1]

TUNE = {"seed": 0, "merge": {"method": "task_arithmetic", "params": {"lambda": 1.0}},
        "evaluation": {"max_samples": 8, "batch_size": 8},
        "tune": {"space": {"merge.params.lambda": {"low": 0.2, "high": 1.2}}, "sampler": "random"}}


def test_tune_job_leaves_the_study_outputs_and_no_worker_folders(tmp_path, small_zoo) -> None:
    cfg = tmp_path / "tune.yaml"
    cfg.write_text(yaml.safe_dump(TUNE))
    out = tmp_path / "study"
    res = subprocess.run([sys.executable, "jobs/tune.py", "--workers", "2", "--config", str(cfg), "--small",
                          "--n-trials", "2", "--out", str(out)], cwd=ROOT, text=True, capture_output=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "best_config.yaml", "optimization_history.png", "optuna.db", "param_importances.png", "summary.json",
        "trials.parquet"]
    assert json.loads((out / "summary.json").read_text())["states"].get("COMPLETE", 0) >= 2
    # what it prints names what exists: no worker folder (workers printed `results in OUT/worker-0`,
    # `best config: OUT/worker-0/...`), the job's best config once
    assert "worker-" not in res.stdout + res.stderr, res.stdout
    assert f"best config: {out / 'best_config.yaml'}" in res.stdout.splitlines()
    for path in re.findall(r"(?:results in|best config:) (\S+?);?$", res.stdout, re.M):
        assert Path(path).exists(), path
