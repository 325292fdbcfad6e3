"""`evomerge tune` refuses bad input with a clear message before any trial (or zoo build) starts."""

from __future__ import annotations

import socket

import pytest
import yaml

from evomerge.cli import main


def write(tmp_path, tune: dict):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"tune": tune}))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "tune, extra, message",
    [
        ({"space": {"merge.params.densty": {"low": 0.1, "high": 0.9}}}, [], "no merge method in ['task_arithmetic'] has a parameter `densty`"),
        ({"space": {"rht.gamma": {"low": 0.5, "high": 3.0}}}, [], "tune.space.`rht.gamma`: value 3.0 is not allowed"),
        ({"space": {"genome.cross_rate": {"low": 0.9, "high": 0.1}}}, [], "`low` must be below `high`"),
        ({"space": {"rht.gamma": {"low": 0.5, "high": 1.0}}, "sampler": "grid"}, [], "tune.sampler"),
        ({"space": {"rht.gamma": {"low": 0.5, "high": 1.0}}}, ["--storage", "postgresql://u:topsecret@127.0.0.1:{port}/x"],
         "cannot be reached"),
    ],
)
def test_bad_input_exits_2_with_a_message(tmp_path, capsys, tune, extra, message) -> None:
    cfg = write(tmp_path, tune)
    extra = [e.replace("{port}", str(free_port())) for e in extra]
    rc = main(["tune", "--config", str(cfg), "--out", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err
    assert "topsecret" not in err
    assert not (tmp_path / "out" / "trials.parquet").exists()


def test_help_lists_the_options(capsys) -> None:
    assert main(["tune", "--help"]) == 0
    out = capsys.readouterr().out
    for opt in ("--config", "--storage", "--study-name", "--n-trials", "--timeout", "--resume", "--out", "--small"):
        assert opt in out
