"""Where a Ray job's run lives (jobs/_common.py): durable by default, a relative --out refused
inside a job, --resume of a missing run refused, the CLI called with the resolved --out."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))

import _common  # noqa: E402
from _common import JobError, RunLocation, take_option  # noqa: E402


@pytest.fixture
def in_job(monkeypatch):
    """The environment Ray Jobs give a job's driver."""
    meta = {"metadata": {"job_submission_id": "raysubmit_T3st"}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(meta))
    monkeypatch.delenv(_common.RUNS_DIR_ENV, raising=False)
    return "raysubmit_T3st"


def test_take_option_both_spellings() -> None:
    assert take_option(["--a", "1", "--out", "/x", "--b"], "--out") == ("/x", ["--a", "1", "--b"])
    assert take_option(["--out=/y", "--resume"], "--out") == ("/y", ["--resume"])
    assert take_option(["--outline", "z"], "--out") == (None, ["--outline", "z"])
    with pytest.raises(JobError, match="needs a value"):
        take_option(["--out"], "--out")


def test_default_is_the_runs_dir_named_by_the_submission(in_job, monkeypatch, tmp_path) -> None:
    with pytest.raises(JobError, match="EVOMERGE_RUNS_DIR is not set"):
        RunLocation("evolve", None, resume=False)
    monkeypatch.setenv(_common.RUNS_DIR_ENV, "runs")
    with pytest.raises(JobError, match="relative"):
        RunLocation("evolve", None, resume=False)
    monkeypatch.setenv(_common.RUNS_DIR_ENV, str(tmp_path))
    loc = RunLocation("evolve", None, resume=False)
    assert loc.final == f"{tmp_path}/evolve-{in_job}" and loc.local == tmp_path / f"evolve-{in_job}"
    with pytest.raises(JobError, match="--resume needs --out"):
        RunLocation("evolve", None, resume=True)


def test_relative_out_is_refused_in_a_job_with_the_reason(in_job) -> None:
    with pytest.raises(JobError) as err:
        RunLocation("scale", "runs/x", resume=False)
    msg = str(err.value)
    assert "--out 'runs/x' is relative" in msg and "package folder" in msg and "absolute path" in msg


def test_relative_out_outside_a_job_is_the_current_folder(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert RunLocation("evolve", "r1", resume=False).local == tmp_path / "r1"


def test_resume_of_a_missing_run_is_refused(in_job, tmp_path) -> None:
    with pytest.raises(JobError, match="--resume: no run at"):
        RunLocation("evolve", str(tmp_path / "none"), resume=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(JobError, match="--resume: no run at"):
        RunLocation("evolve", str(tmp_path / "empty"), resume=True)
    with pytest.raises(JobError, match="nothing at mock:///bucket/none"):  # pyarrow's in-memory file system
        RunLocation("evolve", "mock:///bucket/none", resume=True)


def test_file_uri_is_the_path(in_job, tmp_path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")
    loc = RunLocation("evolve", f"file://{tmp_path}/run", resume=True)
    assert loc.local == tmp_path / "run" and loc.final == str(tmp_path / "run")


def test_run_passes_the_resolved_out_and_reports_errors(in_job, tmp_path, capsys) -> None:
    seen = []

    def runner(command, args):
        seen.append((command, args))
        Path(args[args.index("--out") + 1]).mkdir(parents=True, exist_ok=True)
        return 0

    assert _common.run("evolve", ["--algo", "genome", "--out", str(tmp_path / "r")], runner=runner) == 0
    assert seen == [("evolve", ["--algo", "genome", "--out", str(tmp_path / "r")])]
    assert f"evomerge job results: {tmp_path / 'r'}" in capsys.readouterr().out
    assert _common.run("evolve", ["--out", "rel"], runner=runner) == 2
    assert "error: --out 'rel' is relative" in capsys.readouterr().err
    assert len(seen) == 1, "the command never ran"
