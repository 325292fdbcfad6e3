"""Search-space declaration: names, ranges and overrides checked through the config schema."""

from __future__ import annotations

import optuna
import pytest

from evomerge.config import config_from_dict
from evomerge.config.sections import RHTConfig
from evomerge.errors import ConfigError
from evomerge.pipelines.tune.space import apply_overrides, build_space, expert_count, space_fingerprint, suggest


def cfg_with(space: dict, tune_extra: dict | None = None, **top):
    return config_from_dict({**top, "tune": {"space": space, **(tune_extra or {})}})


def dims_of(space: dict, n_experts: int | None = 6, tune_extra: dict | None = None, **top):
    cfg = cfg_with(space, tune_extra, **top)
    return build_space(cfg.tune, cfg, n_experts=n_experts)


def test_every_stage_can_be_declared() -> None:
    dims = dims_of({
        "merge.method": {"type": "categorical", "choices": ["ties", "dare_ties", "task_arithmetic"]},
        "merge.params.density": {},  # range from the registry's tune_low/tune_high
        "merge.params.lambda": {"low": 0.5, "high": 1.5},
        "rht.mu": {"low": -0.1, "high": 0.1}, "rht.sigma_g": {"low": 0.0, "high": 0.3},
        "rht.gamma": {"low": 0.5, "high": 1.0}, "rht.alpha": {"low": 0.0, "high": 0.5},
        "rht.beta": {"low": 0.5, "high": 2.0},
        "experts.count": {"type": "int", "low": 2},
    }, rht={"enabled": True})  # rht.*: read with RHT on
    genome = dims_of({  # GENOME's fields: with objective genome (sigma: with the gauss mutation)
        "genome.cross_rate": {"low": 0.0, "high": 1.0}, "genome.sigma": {"low": 1e-4, "high": 1e-1, "log": True},
        "genome.population": {"type": "int", "low": 4, "high": 12}, "rht.gamma": {"low": 0.5, "high": 1.0},
        "experts.count": {"type": "int", "low": 2},
    }, genome={"mutation": "gauss"}, rht={"enabled": True, "apply_to": "candidate"}, tune_extra={"objective": "genome"})
    swarm = dims_of({
        "swarm.inertia": {"low": 0.1, "high": 0.9}, "swarm.init_velocity": {"type": "categorical",
                                                                            "choices": ["random", "zero"]},
    }, tune_extra={"objective": "swarm"})
    assert [d.name for d in swarm] == ["swarm.inertia", "swarm.init_velocity"]
    by = {d.name: d for d in dims + genome}
    from evomerge.merging.registry import get_merge_method

    density = get_merge_method("ties").param("density")
    assert (by["merge.params.density"].low, by["merge.params.density"].high) == (density.tune_low, density.tune_high)
    assert by["experts.count"].high == 6 and by["experts.count"].type == "int"
    assert by["genome.population"].type == "int" and by["genome.sigma"].log


@pytest.mark.parametrize(
    "space, fragment",
    [
        ({"merge.params.densty": {"low": 0.1, "high": 0.9}}, "parameter `densty`"),
        ({"rht.gama": {"low": 0.1, "high": 0.9}}, "unknown parameter `gama` of section `rht`"),
        ({"nosuch.x": {"low": 0, "high": 1}}, "unknown parameter"),
        ({"rht.gamma": {"low": 0.5, "high": 1.5}}, "value 1.5 is not allowed"),
        ({"genome.cross_rate": {"low": 0.8, "high": 0.2}}, "`low` must be below `high`"),
        ({"merge.params.density": {"low": 0.0, "high": 0.5}}, "density"),
        ({"genome.sigma": {"low": 0.0, "high": 0.1, "log": True}}, "log-scale"),
        ({"genome.population": {"type": "float", "low": 2, "high": 8}}, "integer field"),
        ({"merge.method": {"type": "categorical", "choices": ["ties", "nope"]}}, "unknown merge method `nope`"),
        ({"experts.count": {"type": "int", "low": 1, "high": 9}}, "only 6 experts"),
        ({"ray.num_actors": {"type": "int", "low": 1, "high": 2}}, "cannot be tuned"),
        ({"rht.gamma": {"low": 0.5}}, "needs `low` and `high`"),
        ({}, "tune.space is empty"),
    ],
)
def test_bad_space_is_refused_with_a_clear_message(space, fragment) -> None:
    with pytest.raises(ConfigError) as err:
        dims_of(space)
    assert fragment in str(err.value)


def test_overrides_are_revalidated_by_the_schema() -> None:
    base = config_from_dict({"merge": {"method": "ties", "params": {"density": 0.5, "majority_sign_method": "total"}}})
    cfg = apply_overrides(base, {"merge.method": "task_arithmetic", "merge.params.lambda": 0.7, "rht.gamma": 0.8,
                                 "experts.count": 3})
    assert cfg.merge.method == "task_arithmetic"
    assert cfg.merge.params == {"lambda": 0.7}  # ties' own params dropped for the new method
    assert cfg.rht.gamma == 0.8 and base.rht.gamma == RHTConfig().gamma  # base untouched
    assert expert_count({"experts.count": 3}) == 3 and expert_count({"rht.gamma": 1}) is None
    with pytest.raises(ConfigError, match="genome.cross_rate"):
        apply_overrides(base, {"genome.cross_rate": 2.0})


def test_conditional_merge_params_follow_the_sampled_method() -> None:
    dims = dims_of({
        "merge.method": {"type": "categorical", "choices": ["ties", "task_arithmetic"]},
        "merge.params.density": {},
    })
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        values = suggest(trial, dims)
        seen.add(values["merge.method"])
        assert ("merge.params.density" in values) == (values["merge.method"] == "ties")
        base = config_from_dict({"merge": {"method": "ties"}})
        cfg = apply_overrides(base, values)
        assert cfg.merge.method == values["merge.method"]
        if "merge.params.density" in values:
            assert 0.05 <= cfg.merge.params["density"] <= 1.0
        study.tell(trial, 0.0)
    assert seen == {"ties", "task_arithmetic"}


def test_fingerprint_changes_with_the_space() -> None:
    a = dims_of({"rht.gamma": {"low": 0.5, "high": 1.0}}, rht={"enabled": True})
    b = dims_of({"rht.gamma": {"low": 0.6, "high": 1.0}}, rht={"enabled": True})
    same = dims_of({"rht.gamma": {"low": 0.5, "high": 1.0}}, rht={"enabled": True})
    assert space_fingerprint(a, "merge") == space_fingerprint(same, "merge")
    assert space_fingerprint(a, "merge") != space_fingerprint(b, "merge")
    assert space_fingerprint(a, "merge") != space_fingerprint(a, "genome")


def test_every_invalid_dimension_is_reported_one_line_each() -> None:
    with pytest.raises(ConfigError) as err:
        dims_of({"evaluation.max_samples": {"type": "int", "low": 8, "high": 64},
                 "genome.cross_rate": {"low": 0.1, "high": 0.9},  # a valid one in between: no line
                 "genome.sigmaa": {"low": 0.1, "high": 0.2},
                 "merge.params.densty": {"low": 0.1, "high": 0.9}}, tune_extra={"objective": "genome"})
    lines = str(err.value).splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("tune.space.`evaluation.max_samples`: section `evaluation` cannot be tuned")
    assert lines[1].startswith("tune.space.`genome.sigmaa`: unknown parameter `sigmaa` of section `genome`")
    assert lines[2].startswith("tune.space.`merge.params.densty`: no merge method")


@pytest.mark.parametrize(
    "objective, name, spec",
    [
        ("swarm", "genome.cross_rate", {"low": 0.1, "high": 0.9}),
        ("genome", "swarm.inertia", {"low": 0.1, "high": 0.9}),
        ("merge", "genome.population", {"type": "int", "low": 4, "high": 8}),
        ("merge", "swarm.step", {"low": 0.5, "high": 1.0}),
    ],
)
def test_a_dimension_the_objective_never_reads_is_refused(objective, name, spec) -> None:
    with pytest.raises(ConfigError) as err:
        dims_of({name: spec, "experts.count": {"type": "int", "low": 2}}, tune_extra={"objective": objective})
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"tune.space.`{name}`: has no effect with tune.objective `{objective}`")


@pytest.mark.parametrize(
    "genome, space, name, ok",
    [
        ({}, {}, "genome.sigma", False),  # the defaults: auto = coeff in delta space
        ({}, {}, "genome.gene_mut_rate", False),
        ({}, {}, "genome.coeff_sigma", True),
        ({"mutation": "gauss"}, {}, "genome.sigma", True),
        ({"mutation": "gauss"}, {}, "genome.coeff_sigma", False),
        ({"space": "ab"}, {}, "genome.sigma", True),  # auto = gauss in ab space
        ({}, {"genome.mutation": {"type": "categorical", "choices": ["coeff", "gauss"]}}, "genome.sigma", True),
        ({}, {"genome.space": {"type": "categorical", "choices": ["delta", "ab"]}}, "genome.sigma", True),
    ],
)
def test_a_mutation_field_the_mutation_never_reads_is_refused(genome, space, name, ok) -> None:
    ranges = {"genome.sigma": {"low": 1e-4, "high": 1e-1, "log": True},
              "genome.gene_mut_rate": {"low": 0.05, "high": 0.5}, "genome.coeff_sigma": {"low": 0.01, "high": 0.3}}
    full = {**space, name: ranges[name]}
    if ok:
        assert name in {d.name for d in dims_of(full, genome=genome, tune_extra={"objective": "genome"})}
        return
    with pytest.raises(ConfigError) as err:
        dims_of(full, genome=genome, tune_extra={"objective": "genome"})
    assert str(err.value).startswith(f"tune.space.`{name}`: has no effect: only the ")


def test_the_docs_example_space_is_valid_under_the_defaults() -> None:
    """docs/tuning.md's example space: every dimension it shows must have an effect."""
    import re
    from pathlib import Path

    import yaml

    text = Path(__file__).resolve().parents[1].joinpath("docs", "tuning.md").read_text()
    section = text.split("## The search space", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    for block in blocks:
        cfg = config_from_dict(yaml.safe_load(block))
        assert len(build_space(cfg.tune, cfg, n_experts=6)) == len(cfg.tune.space)
