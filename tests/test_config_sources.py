"""One resolver of "who set this key" (evomerge.config.sources) for every way a config is built:
a file or the built-in config, ``--set``, a command's flags, ``--preset``. Each line of a refusal
names where its own keys were set; a key nobody set is the schema's default, not the file's."""

from __future__ import annotations

import pytest

from _cli_helpers import one_error, run_cli
from evomerge.cli._common import load_config_with_sets
from evomerge.config import load_config
from evomerge.errors import ConfigError
from evomerge.pipelines.scale.defaults import preset_data

LAW = ("`scale.law_first_k` (4) must be below `scale.k_max` (3): the law fitted on k <= law_first_k predicts "
       "the k beyond it, and fitted on every k the run measures it would predict nothing")
EMPTY_GRID = ("`scale.search_k` is empty, so the searches of `scale.search` ['genome'] would run at no k; list the "
              "k values, leave it out (every k from 2) or empty `scale.search`")


def _refusal(fn, *args, **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as err:
        fn(*args, **kwargs)
    return str(err.value).splitlines()


def test_each_line_of_a_cross_key_refusal_names_its_own_keys_sources(tmp_path):
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("scale:\n  search: [genome]\n  search_k: []\n")
    # the empty grid is the file's; k_max is --set's and law_first_k nobody's (the schema's default)
    assert _refusal(load_config_with_sets, cfg, ["scale.k_max=3"]) == [f"{cfg}: {EMPTY_GRID}", f"--set: {LAW}"]


def test_a_key_the_file_leaves_out_is_not_blamed_on_the_file(tmp_path):
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("scale:\n  seeds: [0]\n")  # says nothing of law_first_k
    assert _refusal(load_config_with_sets, cfg, ["scale.k_max=3"]) == [f"--set: {LAW}"]
    assert _refusal(load_config, cfg, {"scale.k_max": 3}) == [f"--set: {LAW}"]


def test_the_same_refusal_reads_the_same_with_and_without_a_preset():
    plain = _refusal(load_config_with_sets, None, ["scale.k_max=3"])
    assert plain == _refusal(preset_data, "paper", sets={"scale.k_max": 3}) == [f"--set: {LAW}"]


def test_the_scale_commands_built_in_config_is_named(tmp_path, capsys):
    """`scale --set genome.preset=paper` contradicts the built-in config's small GENOME budget,
    not anything the user set on its own: both are named."""
    code, _, err = run_cli(["scale", "--small", "--out", tmp_path / "run", "-q", "--set", "genome.preset=paper"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and lines and all(line.startswith("error: the built-in config + --set: `genome.") for line in lines)
    assert "`genome.population` is 4 but `genome.preset: paper` sets it to 10" in err
    assert not (tmp_path / "run").exists()


def test_list_items_and_dotted_space_dimensions_are_found_in_the_file(tmp_path, capsys):
    cfg = tmp_path / "t.yaml"
    cfg.write_text("tune:\n  space:\n    rht.gamma: {low: yes, high: 2}\n")
    assert _refusal(load_config, cfg)[0].startswith(f"{cfg}: `tune.space.rht.gamma.low`: Input should be a valid number")
    cfg.write_text("merge:\n  weights: [1.0, yes]\n")
    assert _refusal(load_config, cfg)[0].startswith(f"{cfg}: `merge.weights.1`: Input should be a valid number")


def test_a_section_presets_contradiction_names_the_key_and_the_preset(tmp_path, capsys):
    cfg = tmp_path / "g.yaml"
    cfg.write_text("genome:\n  population: 4\n")
    line = one_error(["evolve", "--algo", "genome", "--small", "--config", cfg, "--out", tmp_path / "g",
                      "--set", "genome.preset=paper"], capsys)
    assert line == (f"error: {cfg} + --set: `genome.population` is 4 but `genome.preset: paper` sets it to 10; "
                    "remove one of them")


def test_a_key_below_a_short_form_value_is_blamed_on_the_file(tmp_path):
    """An expert given as its path string; the refusal names `experts.experts.0.path`, a key the
    file holds only in short: the file set it (not the schema's defaults)."""
    cfg = tmp_path / "e.yaml"
    cfg.write_text('experts:\n  experts: ["zoo:nope/x"]\n')
    line = _refusal(load_config, cfg)[0]
    assert line.startswith(f"{cfg}: `experts.experts.0.path`") and "unknown zoo profile 'nope'" in line


def test_a_check_after_loading_is_blamed_only_for_its_own_keys(tmp_path):
    """`blame_layered` rewrites a refusal that says its keys (all under `under`) and passes any
    other error through unchanged."""
    from evomerge.config.sections import key_errors
    from evomerge.config.sources import blame_layered

    cfg = tmp_path / "g.yaml"
    cfg.write_text("genome:\n  population: 40\n")
    err = key_errors([(("genome.population", "genome.init_pairs"), "`genome.population` (40) is too large")])
    assert str(blame_layered(err, cfg, [("--set", {"genome.init_pairs": "coverage"})])) == (
        f"{cfg} + --set: `genome.population` (40) is too large")
    assert blame_layered(err, cfg, [], under="tune.space.") is err
    plain = ConfigError("no keys")
    assert blame_layered(plain, cfg, []) is plain
