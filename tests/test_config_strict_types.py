"""Value kinds, checked in one place for every section (config.base.Section): true/false is no
number (it ran as 1: `scale.delta=true` a fixed Delta of 1, `scale.seeds=[true]` seed 1),
anything but true/false is no boolean (`yes`, a string in YAML 1.2, ran as true, and so did 1),
and a number must be finite. An integer stays a number and a string a path; pydantic's strict
mode is not used. Errors of several keys and sections are all reported, one line each."""

from __future__ import annotations

from pathlib import Path

import pytest

from _cli_helpers import one_error
from evomerge.config import EvomergeConfig, config_from_dict, load_config
from evomerge.config.sections import GenomeConfig, MergeConfig, RHTConfig
from evomerge.errors import ConfigError

NOT_A_NUMBER = "(true/false is not a number)"
YAML_12 = "(YAML 1.2: only true/false are booleans, yes/no/on/off are strings)"


def _error(sets: dict) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(None, sets)
    return str(err.value)


def test_cli_lines(tmp_path, capsys):
    out = tmp_path / "run"
    cases = {
        "scale.delta=true": "`scale.delta`: Input should be a positive finite number, 'relative' or 'adaptive'. "
                            "Got True instead.",
        "scale.online_tol=true": f"`scale.online_tol`: Input should be a number {NOT_A_NUMBER}. Got True instead.",
        "scale.seeds=[true]": f"`scale.seeds`: Input should be a list of integers {NOT_A_NUMBER}. Got [True] instead.",
        "scale.with_rht=yes": f"`scale.with_rht`: Input should be true or false {YAML_12}. Got 'yes' instead.",
        "scale.with_rht=1": "`scale.with_rht`: Input should be true or false. Got 1 instead.",
    }
    for item, line in cases.items():
        assert one_error(["scale", "--small", "--out", out, "-q", "--set", item], capsys) == f"error: --set: {line}"
        assert not out.exists()


@pytest.mark.parametrize("key,value,line", [
    ("seed", True, f"`seed`: Input should be an integer {NOT_A_NUMBER}. Got True instead."),
    ("rht.gamma", True, f"`rht.gamma`: Input should be a number {NOT_A_NUMBER}. Got True instead."),
    ("rht.enabled", "on", f"`rht.enabled`: Input should be true or false {YAML_12}. Got 'on' instead."),
    ("rht.preserve_norm", 0, "`rht.preserve_norm`: Input should be true or false. Got 0 instead."),
    ("merge.rank", False, f"`merge.rank`: Input should be an integer {NOT_A_NUMBER}. Got False instead."),
    ("merge.weights", [1, True], f"`merge.weights`: Input should be a list of numbers {NOT_A_NUMBER}. "
                                 "Got [1, True] instead."),
    ("evaluation.max_samples", True, f"`evaluation.max_samples`: Input should be an integer {NOT_A_NUMBER}. "
                                     "Got True instead."),
    ("evaluation.task_weights", {"a": True}, "`evaluation.task_weights`: Input should be a mapping of names to numbers "
                                             f"{NOT_A_NUMBER}. Got {{'a': True}} instead."),
    ("genome.early_stop", "no", f"`genome.early_stop`: Input should be true or false {YAML_12}. Got 'no' instead."),
    ("genome.init_sums", [0.5, False], f"`genome.init_sums`: Input should be a list of numbers {NOT_A_NUMBER}. "
                                       "Got [0.5, False] instead."),
    ("swarm.max_particles", True, f"`swarm.max_particles`: Input should be an integer {NOT_A_NUMBER}. "
                                  "Got True instead."),
    ("ray.gpus_per_actor", True, f"`ray.gpus_per_actor`: Input should be a number {NOT_A_NUMBER}. Got True instead."),
    ("experts.allow_bin", "yes", f"`experts.allow_bin`: Input should be true or false {YAML_12}. Got 'yes' instead."),
    ("tune.n_trials", True, f"`tune.n_trials`: Input should be an integer {NOT_A_NUMBER}. Got True instead."),
    ("tune.space", {"rht.gamma": {"low": True, "high": 1}},
     f"`tune.space.rht.gamma.low`: Input should be a number {NOT_A_NUMBER}. Got True instead."),
    ("tune.space", {"rht.gamma": {"low": 0.5, "high": 1, "log": 1}},
     "`tune.space.rht.gamma.log`: Input should be true or false. Got 1 instead."),
])
def test_every_section(key, value, line):
    assert _error({key: value}) == f"--set: {line}"


@pytest.mark.parametrize("key,value,line", [
    ("genome.sigma", float("inf"), "`genome.sigma`: Input should be a finite number. Got inf instead."),
    ("swarm.step", float("inf"), "`swarm.step`: Input should be a finite number. Got inf instead."),
    ("ray.placement_timeout_s", float("inf"), "`ray.placement_timeout_s`: Input should be a finite number. "
                                              "Got inf instead."),
    ("scale.online_tol", float("inf"), "`scale.online_tol`: Input should be a finite number. Got inf instead."),
    ("merge.weights", [1.0, float("nan")], "`merge.weights`: Input should be a list of finite numbers. "
                                           "Got [1.0, nan] instead."),
    ("evaluation.task_weights", {"a": float("inf")}, "`evaluation.task_weights`: Input should be a mapping of names "
                                                     "to finite numbers. Got {'a': inf} instead."),
    ("tune.timeout", float("inf"), "`tune.timeout`: Input should be a finite number. Got inf instead."),
])
def test_numbers_are_finite(key, value, line):
    assert _error({key: value}) == f"--set: {line}"


def test_what_stays_accepted(tmp_path):
    cfg = config_from_dict({
        "seed": 3, "zoo_dir": str(tmp_path), "rht": {"gamma": 1, "enabled": True, "mu": -2},
        "merge": {"weights": [1, 0.5], "params": {"lambda": 1}}, "evaluation": {"task_weights": {"a": 2}},
        "genome": {"sigma": 0, "init_sums": [1, 2.5], "early_stop": False}, "scale": {"delta": 1, "seeds": [4, 0]},
        "ray": {"gpus_per_actor": 0, "placement_timeout_s": 30}, "tune": {"timeout": 60, "objective": "genome"},
    })
    assert cfg.rht.gamma == 1.0 and isinstance(cfg.rht.gamma, float) and cfg.merge.weights == [1.0, 0.5]
    assert cfg.zoo_dir == Path(tmp_path) and cfg.scale.delta == 1.0 and cfg.scale.seeds == [4, 0]
    assert cfg.tune.objective == "genome" and cfg.evaluation.task_weights == {"a": 2.0}


def test_several_sections_report_every_key():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"rht": {"enabled": "yes"}, "genome": {"sigma": float("inf"), "population": True},
                          "scale": {"seeds": [True], "online_tol": -1}}, "c.yaml")
    assert str(err.value).splitlines() == [
        f"c.yaml: `rht.enabled`: Input should be true or false {YAML_12}. Got 'yes' instead.",
        f"c.yaml: `genome.population`: Input should be an integer {NOT_A_NUMBER}. Got True instead.",
        "c.yaml: `genome.sigma`: Input should be a finite number. Got inf instead.",
        f"c.yaml: `scale.seeds`: Input should be a list of integers {NOT_A_NUMBER}. Got [True] instead.",
        "c.yaml: `scale.online_tol`: Input should be greater than 0. Got -1 instead.",
    ]


def test_sections_built_directly_raise_config_errors():
    for build, line in (
        (lambda: RHTConfig(enabled=1), "RHTConfig: `rht.enabled`: Input should be true or false. Got 1 instead."),
        (lambda: GenomeConfig(population=True),
         f"GenomeConfig: `genome.population`: Input should be an integer {NOT_A_NUMBER}. Got True instead."),
        (lambda: MergeConfig(rank=0), "MergeConfig: `merge.rank`: Input should be greater than 0. Got 0 instead."),
        (lambda: EvomergeConfig(seed="x"),
         "EvomergeConfig: `seed`: Input should be a valid integer, unable to parse string as an integer. "
         "Got 'x' instead."),
    ):
        with pytest.raises(ConfigError) as err:
            build()
        assert str(err.value) == line
    # a section inside a config is validated with the others (its errors are not cut short at its section)
    assert EvomergeConfig(scale={"seeds": [1]}).scale.seeds == [1]


def test_yaml_files_read_the_same(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rht:\n  enabled: on\nscale:\n  online_tol: .inf\n  with_rht: true\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).splitlines() == [
        f"{path}: `rht.enabled`: Input should be true or false {YAML_12}. Got 'on' instead.",
        f"{path}: `scale.online_tol`: Input should be a finite number. Got inf instead.",
    ]


def test_the_shipped_configs_still_load():
    from evomerge.pipelines.scale.defaults import default_config, preset_data

    root = Path(__file__).resolve().parents[1]
    assert default_config().scale.seeds == [0, 1, 2]
    assert config_from_dict(preset_data("paper"), "--preset paper").scale.population_test
    files = sorted((root / "jobs" / "configs").glob("*.yaml"))
    assert files
    for path in files:
        load_config(path)
