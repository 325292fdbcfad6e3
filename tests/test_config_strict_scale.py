"""The `scale:` section refuses, before Ray starts and before any folder is written, the values
that used to pass validation and then crash or mislead after the work had begun: no seeds (an
IndexError in the plan), a negative seed (numpy's order), a seed listed twice (every row twice),
no registry method (the report's reference, a KeyError after every search), searches on an empty
k grid, a non-finite or non-numeric Delta (two lines of pydantic internals, or refused only after
Ray had started), and a delta_fraction that the given Delta ignores. Independent keys are all
reported, one line each."""

from __future__ import annotations

import pytest

from _cli_helpers import one_error, run_cli
from evomerge.config import config_from_dict, load_config
from evomerge.config.sections import ScaleConfig
from evomerge.errors import ConfigError


def _refused(tmp_path, capsys, *sets: str) -> str:
    out = tmp_path / "run"
    line = one_error(["scale", "--small", "--out", str(out), "-q", *[a for s in sets for a in ("--set", s)]], capsys)
    assert not out.exists()
    return line


SEEDS = "must be a non-empty list of distinct non-negative integers"


@pytest.mark.parametrize("value,why,got", [
    ("[]", "every cell runs once per seed", "[]"),
    ("[-1]", "-1 is negative", "[-1]"),
    ("[0, 0]", "seed 0 is listed twice", "[0, 0]"),
    ("[3, 1, 3]", "seed 3 is listed twice", "[3, 1, 3]"),
])
def test_seeds(tmp_path, capsys, value, why, got):
    assert _refused(tmp_path, capsys, f"scale.seeds={value}") == (
        f"error: --set: `scale.seeds`: {SEEDS} ({why}). Got {got} instead.")


def test_negative_seed_with_a_random_order(tmp_path, capsys):
    assert _refused(tmp_path, capsys, "scale.order=random", "scale.seeds=[-1]") == (
        f"error: --set: `scale.seeds`: {SEEDS} (-1 is negative). Got [-1] instead.")


def test_methods_empty_or_twice(tmp_path, capsys):
    assert _refused(tmp_path, capsys, "scale.methods=[]") == (
        "error: --set: `scale.methods`: must list at least one merge-registry method: the report compares every "
        "curve with the best registry merge (its reference). Got [] instead.")
    assert _refused(tmp_path, capsys, "scale.methods=[ties, ties]") == (
        "error: --set: `scale.methods`: must not list a value twice (method 'ties' is listed twice). "
        "Got ['ties', 'ties'] instead.")
    assert _refused(tmp_path, capsys, "scale.search=[genome, genome]") == (
        "error: --set: `scale.search`: must not list a value twice (search 'genome' is listed twice). "
        "Got ['genome', 'genome'] instead.")


def test_an_empty_search_grid_with_searches(tmp_path, capsys):
    assert _refused(tmp_path, capsys, "scale.search_k=[]") == (
        "error: the built-in config + --set: `scale.search_k` is empty, so the searches of `scale.search` "
        "['genome', 'swarm'] would run at no k; list the k values, leave it out (every k from 2) or empty "
        "`scale.search`")  # the searches are the built-in config's, the empty grid --set's
    # without searches there is nothing to run on the grid: accepted
    cfg = config_from_dict({"scale": {"search": [], "search_k": []}})
    assert cfg.scale.search_k == []


DELTA = "Input should be a positive finite number, 'relative' or 'adaptive'"


@pytest.mark.parametrize("value,got", [
    ("abc", "'abc'"), (".inf", "inf"), ("-.inf", "-inf"), (".nan", "nan"), ("0", "0"), ("-1", "-1"), ("true", "True"),
    ("[1]", "[1]"),
])
def test_delta_is_one_line_saying_what_it_accepts(tmp_path, capsys, value, got):
    assert _refused(tmp_path, capsys, f"scale.delta={value}") == f"error: --set: `scale.delta`: {DELTA}. Got {got} instead."


def test_delta_accepts_what_it_says():
    for value in (0.5, 2, "relative", "adaptive"):
        assert config_from_dict({"scale": {"delta": value}}).scale.delta == value


def test_other_union_fields_are_one_line():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"tune": {"objective": "abc"}}, "t.yaml")
    assert str(err.value) == "t.yaml: `tune.objective`: Input should be 'merge' or 'genome' or 'swarm'. Got 'abc' instead."


def test_independent_keys_are_all_reported(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("scale:\n  delta: 0\n  delta_fraction: 2\n  online_tol: -1\n")
    code, out, err = run_cli(["scale", "--small", "--config", path, "--out", tmp_path / "run", "-q"], capsys)
    assert code == 2 and "Traceback" not in out + err and not (tmp_path / "run").exists()
    assert err.strip().splitlines() == [
        f"error: {path}: `scale.delta`: {DELTA}. Got 0 instead.",
        f"error: {path}: `scale.delta_fraction`: must be in (0, 1). Got 2 instead.",
        f"error: {path}: `scale.online_tol`: Input should be greater than 0. Got -1 instead.",
    ]


def test_a_fraction_with_another_delta_is_refused_naming_both(tmp_path, capsys):
    assert _refused(tmp_path, capsys, "scale.delta=2e-5", "scale.delta_fraction=0.3") == (
        "error: --set: `scale.delta_fraction` (0.3) applies only to `scale.delta: relative`, but `scale.delta` is "
        "2e-05; remove one of them")
    with pytest.raises(ConfigError, match=r"`scale.delta_fraction` \(0.25\) applies only to `scale.delta: relative`, "
                                          r"but `scale.delta` is 'adaptive'"):
        config_from_dict({"scale": {"delta": "adaptive", "delta_fraction": 0.25}})
    # the default fraction (always in a saved config) with a fixed Delta, and a fraction with relative: accepted
    assert load_config(None, {"scale.delta": 2e-5}).scale.delta == 2e-5
    assert config_from_dict({"scale": {"delta": 2e-5, "delta_fraction": 0.1}}).scale.delta == 2e-5
    assert config_from_dict({"scale": {"delta_fraction": 0.3}}).scale.delta_fraction == 0.3


def test_checks_across_keys_are_all_reported():
    with pytest.raises(ConfigError) as err:
        load_config(None, {"scale.delta": "adaptive", "scale.delta_fraction": 0.3, "scale.k_max": 3,
                           "scale.method_params.slerp.t": 0.5})
    assert str(err.value).splitlines() == [
        "--set: `scale.delta_fraction` (0.3) applies only to `scale.delta: relative`, but `scale.delta` is "
        "'adaptive'; remove one of them",
        "--set: `scale.method_params.slerp`: `slerp` is not in `scale.methods` "
        "['task_arithmetic', 'ties', 'dare_ties', 'emr']",
        "--set: `scale.law_first_k` (4) must be below `scale.k_max` (3): the law fitted on k <= law_first_k predicts "
        "the k beyond it, and fitted on every k the run measures it would predict nothing",
    ]


def test_a_section_built_directly_refuses_with_a_config_error():
    with pytest.raises(ConfigError) as err:
        ScaleConfig(seeds=[], delta=".inf")
    assert str(err.value).splitlines() == [
        f"ScaleConfig: `scale.seeds`: {SEEDS} (every cell runs once per seed). Got [] instead.",
        f"ScaleConfig: `scale.delta`: {DELTA}. Got '.inf' instead.",
    ]
