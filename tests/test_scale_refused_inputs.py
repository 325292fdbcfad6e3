"""`evomerge scale` refuses bad input with one line naming the file or key, exit code 2, and
leaves no output folder behind (an earlier one blocked the corrected run: "holds a scale run
with a different config"); inputs are never modified."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import yaml

from _cli_helpers import run_cli
from evomerge.cli import main


def _sha(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _user_pool(small_zoo, tmp_path, n=4, task_files=True):
    """A config over ``n`` of the small zoo's LoRA experts, copied, as a user's own pool."""
    experts = []
    for task in small_zoo.tasks[:n]:
        dst = tmp_path / "pool" / task
        shutil.copytree(small_zoo.expert_dirs[task], dst)
        experts.append({"path": str(dst), "name": task, "task": task})
    data = {"experts": {"base": str(small_zoo.base_dir), "experts": experts}}
    if task_files:
        data["evaluation"] = {"task_files": {t: str(small_zoo.task_files(t)["validation"].parent)
                                             for t in small_zoo.tasks[:n]}}
    cfg = tmp_path / "scale.yaml"
    cfg.write_text(yaml.safe_dump(data))
    return cfg, [tmp_path / "pool" / t for t in small_zoo.tasks[:n]]


def _refused(args, capsys):
    code, _, err = run_cli(["scale", *args, "--no-progress"], capsys)
    return code, [line for line in err.strip().splitlines() if line.startswith("error:")]


def test_a_pool_without_task_files_is_refused_and_leaves_no_folder(small_zoo, tmp_path, capsys):
    cfg, _ = _user_pool(small_zoo, tmp_path, task_files=False)
    out = tmp_path / "run"
    code, errors = _refused(["--config", str(cfg), "--out", str(out)], capsys)
    assert code == 2 and len(errors) == 1 and "evaluation.task_files" in errors[0]
    assert not out.exists()


def test_a_corrupt_expert_is_named_before_the_pool_size(small_zoo, tmp_path, capsys):
    """Three experts (too few for the rules), one of them truncated: the file is named first, and
    nothing is written or changed."""
    cfg, dirs = _user_pool(small_zoo, tmp_path, n=3)
    weights = dirs[1] / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    before = _sha(tmp_path / "pool")
    out = tmp_path / "run"
    code, errors = _refused(["--config", str(cfg), "--out", str(out)], capsys)
    assert code == 2 and len(errors) == 1 and str(weights) in errors[0]
    assert not out.exists() and _sha(tmp_path / "pool") == before


def test_an_empty_out_folder_given_by_the_user_stays_empty(small_zoo, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    code, errors = _refused(["--small", "--out", str(out), "--set", "evaluation.tasks=[nope]"], capsys)
    assert code == 2 and "evaluation.tasks" in errors[0] and "nope" in errors[0]
    assert out.is_dir() and not any(out.iterdir())


def test_a_refusal_after_the_folder_is_made_removes_it(small_zoo, tmp_path, monkeypatch):
    """The last line of defence: an input error raised once the run has its folder (here the
    expert order's refusal, raised while planning) leaves nothing; a resumed run's folder stays."""
    from evomerge.config import config_from_dict
    from evomerge.errors import ConfigError
    from evomerge.pipelines.scale import driver

    def refuse(*args, **kwargs):
        raise ConfigError("`scale.order`: refused while planning")

    monkeypatch.setattr(driver, "make_plan", refuse)
    cfg = config_from_dict({"scale": {"methods": ["task_arithmetic"], "search": [], "seeds": [0]}})
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="scale.order"):
        driver.run_scale(cfg, out, zoo=small_zoo, progress=False, overlap=False, analyze=False, report=False)
    assert not out.exists()
    (out / "cells").mkdir(parents=True)
    (out / "cells" / "k001-x.parquet").write_bytes(b"")  # a cell on disk: the run has started
    driver.discard_unstarted(out)
    assert (out / "cells" / "k001-x.parquet").is_file()


def test_resume_refuses_another_zoo_than_the_run_started_on(tmp_path, capsys):
    """`--resume --zoo default` on a run of the small zoo used to continue on the small zoo
    silently; the same zoo (or none named) still resumes."""
    import json

    from evomerge.config import dump_config
    from evomerge.pipelines.scale.defaults import default_config

    out = tmp_path / "run"
    out.mkdir()
    dump_config(default_config(), out / "config.yaml")
    (out / "plan.json").write_text(json.dumps({"zoo_profile": "small"}))
    before = _sha(out)
    code, errors = _refused(["--out", str(out), "--resume", "--zoo", "default"], capsys)
    assert code == 2 and len(errors) == 1
    assert "started on the `small` zoo, not `default`" in errors[0] and str(out) in errors[0]
    assert _sha(out) == before


def test_print_default_config_needs_no_out(capsys):
    assert main(["scale", "--print-default-config"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert data["scale"]["order"] == "gain"
    assert main(["scale"]) == 2 and "Missing option '--out'" in capsys.readouterr().err


def test_print_config_prints_what_the_options_give_and_runs_nothing(tmp_path, capsys):
    """``--print-config``: the config a preset, --config and --set give (it loads back as the same
    config); ``--print-default-config`` with such options is refused, as it would ignore them
    (it printed the plain built-in config for ``--preset paper``)."""
    from evomerge.config import config_from_dict, load_config

    assert main(["scale", "--preset", "paper", "--print-config"]) == 0
    printed = capsys.readouterr().out
    data = yaml.safe_load(printed)
    assert data["scale"]["search_k"] == [2, 4, 6, 8, 10] and data["scale"]["order"] == "given"
    assert len(data["scale"]["seeds"]) == 5
    (tmp_path / "p.yaml").write_text(printed)
    assert load_config(tmp_path / "p.yaml") == config_from_dict(data, "printed")
    assert main(["scale", "--config", tmp_path / "p.yaml", "--print-config"]) == 0
    assert capsys.readouterr().out == printed  # it loads back as the same config

    assert main(["scale", "--print-config", "--set", "scale.seeds=[4]", "--out", tmp_path / "run"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["scale"]["seeds"] == [4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.yaml"]  # nothing ran, no --out written

    # what the options add outside the config: --no-stop as run_scale lays it over, the built-in zoo as a comment
    assert main(["scale", "--print-config", "--small", "--no-stop"]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == "# runs on the built-in `small` zoo: pass --zoo small with this config"
    assert yaml.safe_load(printed)["scale"]["stop"] is False

    assert main(["scale", "--preset", "paper", "--print-default-config"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("error: --print-default-config prints the built-in config, which --preset would not "
                           "change; --print-config prints the config they give")


def test_a_method_that_cannot_merge_every_k_is_refused_before_any_work(small_zoo, tmp_path, capsys):
    """slerp merges exactly 2 experts: the curve's k = 1 (and 3 ..) cannot be run. It used to fail
    at its first cell, after Ray, the analysis and the expert cell had run, leaving the folder."""
    out = tmp_path / "run"
    code, errors = _refused(["--small", "--out", str(out), "--set", "scale.methods=[ties, slerp]",
                             "--set", "scale.search=[]"], capsys)
    assert code == 2 and len(errors) == 1
    assert "`scale.methods`: `slerp` cannot merge the first k = 1 experts" in errors[0] and "exactly 2" in errors[0]
    assert not out.exists()


def test_a_search_start_that_cannot_merge_every_k_is_refused_before_any_work(small_zoo, tmp_path, capsys):
    """A search starting from slerp (exactly 2 experts) failed in its actor at k = 3."""
    out = tmp_path / "run"
    code, errors = _refused(["--small", "--out", str(out), "--set", "scale.search=[swarm]",
                             "--set", "swarm.init_merges=[ties, slerp]"], capsys)
    assert code == 2 and len(errors) == 1, errors
    assert errors[0].startswith("error: `swarm.init_merges`: `slerp` cannot start a search of 3 experts (merge method")
    assert not out.exists()


def test_only_slerp_refuses_a_pool_size():
    """Which registry methods a scale run can use on every k: all but slerp (2 experts only) and
    consensus at k = 1 (its default ``k`` = 2 masks must agree; one expert would merge to the base)."""
    from evomerge.errors import ConfigError
    from evomerge.merging.registry import all_methods

    refused = set()
    for name, method in all_methods().items():
        for n in range(1, 11):
            try:
                method.check_pool_size(n)
            except ConfigError:
                refused.add((name, n))
    assert refused == {("slerp", n) for n in range(1, 11) if n != 2} | {("consensus", 1)}


@pytest.mark.parametrize("split", ["test", "train"])
def test_a_single_task_file_named_as_another_split_is_refused(small_zoo, tmp_path, capsys, split):
    """A single task file is the validation split, where every choice is made; one named
    ``test.jsonl`` was read as validation, so the peaks and the stop rules were chosen on test data."""
    cfg, dirs = _user_pool(small_zoo, tmp_path)
    task = small_zoo.tasks[0]
    named = tmp_path / "data" / f"{split}.jsonl"
    named.parent.mkdir()
    shutil.copy(small_zoo.task_files(task)["test"], named)
    data = yaml.safe_load(cfg.read_text())
    data["evaluation"]["task_files"][task] = str(named)
    cfg.write_text(yaml.safe_dump(data))
    before = _sha(tmp_path / "data")
    out = tmp_path / "run"
    code, errors = _refused(["--config", str(cfg), "--out", str(out)], capsys)
    assert code == 2 and len(errors) == 1, errors
    assert f"evaluation.task_files.{task}: {named}: a single task file is read as the validation split" in errors[0]
    assert f"named as the {split} split" in errors[0]
    assert not out.exists() and _sha(tmp_path / "data") == before


def test_the_closing_line_names_no_stop_only_when_it_was_given():
    """The closing line of a run whose searches' grid was not cut: ``--no-stop`` when given, else
    the config's ``scale.stop: false`` (``--preset paper`` sets it, as may a config or a resumed
    run's saved config)."""
    from evomerge.cli.scale import closing_stop_text

    assert closing_stop_text("online", True, False, True) == "; the searches' k grid under the online rule"
    assert closing_stop_text("online", False, True, True) == (
        "; the searches' k grid not cut (--no-stop: the online rule is only recorded)")
    assert closing_stop_text("theorem1", False, False, True) == (
        "; the searches' k grid not cut (scale.stop: false: the theorem1 rule is only recorded)")
    assert closing_stop_text("online", True, False, False) == "; no searches"
