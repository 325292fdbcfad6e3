"""`evomerge scale --preset paper` with a whole section given to --set (`--set 'scale={...}'`):
read key by key like the same keys set one by one, so a key that contradicts the preset is
refused naming the dotted key and where it was set (one line per key), and the preset's keys the
section leaves out keep the preset's values (a section given whole used to replace the preset's
section and run with the user's values, exit 0)."""

from __future__ import annotations

import pytest

from _cli_helpers import one_error, run_cli
from evomerge.config import config_from_dict
from evomerge.errors import ConfigError
from evomerge.pipelines.scale.defaults import preset_data


def _scale(tmp_path, *sets: str) -> list[str]:
    return ["scale", "--preset", "paper", "--small", "--out", str(tmp_path / "run"), "-q",
            *[a for s in sets for a in ("--set", s)]]


def test_a_whole_scale_section_is_refused_key_by_key(tmp_path, capsys):
    code, out, err = run_cli(_scale(tmp_path, "scale={seeds: [0], methods: [ties], search: [], with_rht: false, "
                                              "pairs: false}"), capsys)
    assert code == 2 and "Traceback" not in out + err
    assert err.strip().splitlines() == [
        "error: --set: `scale.seeds` is [0] but --preset paper sets it to [0, 1, 2, 3, 4]; remove one of them",
        "error: --set: `scale.methods` is ['ties'] but --preset paper sets it to ['task_arithmetic', 'ties']; "
        "remove one of them",
        "error: --set: `scale.search` is [] but --preset paper sets it to ['genome', 'swarm']; remove one of them",
    ]  # with_rht: false is the preset's own value; pairs is not the preset's
    assert not (tmp_path / "run").exists()


def test_a_whole_genome_section_contradicts_the_genome_preset_it_names(tmp_path, capsys):
    assert one_error(_scale(tmp_path, "genome={population: 4}"), capsys) == (
        "error: --set: `genome.population` is 4 but --preset paper (`genome.preset: paper`) sets it to 10; "
        "remove one of them")
    assert not (tmp_path / "run").exists()


def test_a_whole_evaluation_section_is_refused(tmp_path, capsys):
    assert one_error(_scale(tmp_path, "evaluation={max_samples: 16}"), capsys) == (
        "error: --set: `evaluation.max_samples` is 16 but --preset paper sets it to 200; remove one of them")
    assert not (tmp_path / "run").exists()


def test_a_dotted_key_is_refused_as_before(tmp_path, capsys):
    assert one_error(_scale(tmp_path, "scale.seeds=[0]"), capsys) == (
        "error: --set: `scale.seeds` is [0] but --preset paper sets it to [0, 1, 2, 3, 4]; remove one of them")


def test_a_section_that_agrees_keeps_every_key_of_the_preset():
    cfg = config_from_dict(preset_data("paper", None, {"scale": {"pairs": False, "seeds": [0, 1, 2, 3, 4]},
                                                      "genome": {"population": 10}, "swarm": None}))
    s = cfg.scale
    assert not s.pairs and s.seeds == [0, 1, 2, 3, 4]
    assert s.search_k == [2, 4, 6, 8, 10] and s.order == "given" and s.population_test and not s.stop
    assert s.methods == ["task_arithmetic", "ties"] and set(s.search) == {"genome", "swarm"} and not s.with_rht
    assert cfg.genome.preset == "paper" and cfg.genome.generations == 10 and cfg.genome.crossover == "dare_ties"
    assert cfg.swarm.preset == "paper" and cfg.swarm.max_iter == 200


def test_removing_a_section_preset_is_refused():
    with pytest.raises(ConfigError) as err:
        preset_data("paper", None, {"genome.preset": None})
    assert str(err.value) == "--set: `genome.preset` is None but --preset paper sets it to 'paper'; remove one of them"


def test_the_config_file_is_named_as_the_source():
    with pytest.raises(ConfigError) as err:
        preset_data("paper", {"scale": {"seeds": [0]}, "genome": {"population": 4, "generations": 3}},
                    {"scale.order": "gain"}, user_source="mine.yaml")
    assert str(err.value).splitlines() == [
        "mine.yaml: `scale.seeds` is [0] but --preset paper sets it to [0, 1, 2, 3, 4]; remove one of them",
        "mine.yaml: `genome.population` is 4 but --preset paper (`genome.preset: paper`) sets it to 10; "
        "remove one of them",
        "mine.yaml: `genome.generations` is 3 but --preset paper (`genome.preset: paper`) sets it to 10; "
        "remove one of them",
        "--set: `scale.order` is 'gain' but --preset paper sets it to 'given'; remove one of them",
    ]


def test_a_bad_value_under_the_preset_names_where_it_was_set(tmp_path, capsys):
    assert one_error(_scale(tmp_path, "scale.online_tol=-1"), capsys) == (
        "error: --set: `scale.online_tol`: Input should be greater than 0. Got -1 instead.")
    with pytest.raises(ConfigError) as err:
        preset_data("paper", {"scale": {"law_noise_z": -1}}, user_source="mine.yaml")
    assert str(err.value) == "mine.yaml: `scale.law_noise_z`: Input should be greater than or equal to 0. Got -1 instead."


def test_one_flattening_for_sections_and_dotted_keys():
    from evomerge.config.overrides import flat_keys

    assert flat_keys({"scale": {"seeds": [0], "method_params": {"ties": {"density": 0.5}}}}) == \
        flat_keys({"scale.seeds": [0], "scale.method_params": {"ties": {"density": 0.5}}}) == \
        {"scale.seeds": [0], "scale.method_params.ties.density": 0.5}
    assert flat_keys({"genome": {}, "swarm": None}) == {"genome": {}, "swarm": None}


def test_a_section_preset_lists_every_contradicting_key():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"genome": {"preset": "paper", "population": 3, "generations": 2}}, "g.yaml")
    assert str(err.value).splitlines() == [
        "g.yaml: `genome.population` is 3 but `genome.preset: paper` sets it to 10; remove one of them",
        "g.yaml: `genome.generations` is 2 but `genome.preset: paper` sets it to 10; remove one of them",
    ]


def test_a_whole_section_keeps_the_config_files_other_keys():
    """``--config mine.yaml --set 'scale={pairs: false}'`` under the preset: the section sets its
    key, and the file's other scale keys stay (the section given whole replaced the file's)."""
    user = {"scale": {"k_max": 8, "online_tol": 0.05}}
    cfg = config_from_dict(preset_data("paper", user, {"scale": {"pairs": False}}, user_source="mine.yaml"))
    assert cfg.scale.k_max == 8 and cfg.scale.online_tol == 0.05 and cfg.scale.pairs is False
    assert cfg.scale.search_k == [2, 4, 6, 8, 10]  # the preset's keys stay over both
