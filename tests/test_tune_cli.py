"""`evomerge tune` refuses bad input with a clear message before any trial (or zoo build) starts."""

from __future__ import annotations

import socket

import pytest
import yaml

from evomerge.cli import main


def write(tmp_path, tune: dict):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"rht": {"enabled": True}, "tune": tune}))  # rht.* dimensions: read with RHT on
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


def test_set_reaches_a_space_dimension_by_its_dotted_name(tmp_path) -> None:
    from evomerge.cli.tune import tune_config

    cfg_path = write(tmp_path, {"space": {"rht.gamma": {"low": 0.7, "high": 1.0},
                                          "merge.params.lambda": {"low": 0.1, "high": 1.0}}})
    _, cfg = tune_config(cfg_path, ["tune.space.rht.gamma={low: 0.5, high: 0.9}"], None, False)
    assert (cfg.tune.space["rht.gamma"].low, cfg.tune.space["rht.gamma"].high) == (0.5, 0.9)
    assert cfg.tune.space["merge.params.lambda"].high == 1.0  # the other dimensions stay
    _, cfg = tune_config(cfg_path, ["tune.space.rht.gamma.low=0.6", "tune.space.rht.alpha={low: 0.0, high: 0.3}",
                                    "tune.space.merge.params.lambda=null"], None, False)
    assert (cfg.tune.space["rht.gamma"].low, cfg.tune.space["rht.gamma"].high) == (0.6, 1.0)
    assert list(cfg.tune.space) == ["rht.gamma", "rht.alpha"]
    _, cfg = tune_config(cfg_path, ["tune.space={rht.beta: {low: 1.0, high: 2.0}}"], None, False)  # the whole space
    assert list(cfg.tune.space) == ["rht.beta"]


def test_a_bad_space_dimension_set_on_the_command_line_is_named(tmp_path, capsys) -> None:
    cfg_path = write(tmp_path, {"space": {"rht.gamma": {"low": 0.7, "high": 1.0}}})
    rc = main(["tune", "--config", str(cfg_path), "--out", str(tmp_path / "out"),
               "--set", "tune.space.rht.gamma={low: 0.5, high: 3.0}", "--set", "tune.space.genome.sigmaa={low: 0, high: 1}"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown key" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    # each line names where its dimension was set (here --set, as a refused config value is named)
    assert lines[0].startswith("error: --set: tune.space.`rht.gamma`: value 3.0 is not allowed")
    assert lines[1].startswith("error: --set: tune.space.`genome.sigmaa`: unknown parameter `sigmaa`")
    assert not (tmp_path / "out" / "optuna.db").exists()
