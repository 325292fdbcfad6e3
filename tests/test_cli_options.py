"""The options every command shares: ``--set key=value`` reaches the config each command runs
with, and ``--zoo PROFILE|PATH`` (``--small`` its alias, a positional folder on the ``zoo``
subcommands) names one zoo or is refused naming both values."""

from __future__ import annotations

import json

import pytest

from _cli_helpers import one_error, run_cli
from evomerge.cli import main


class Captured(Exception):
    """Raised by a pipeline stand-in once it has the config the command built (no work runs)."""


def _capture(monkeypatch, module: str, name: str) -> dict:
    """Replace ``module.name`` (the pipeline function a command calls) by one that records its
    arguments and stops the command: the test reads the config the CLI built and validated."""
    import importlib

    seen: dict = {}

    def stand_in(*args, **kwargs):
        seen["args"], seen["kwargs"] = args, kwargs
        raise Captured

    monkeypatch.setattr(importlib.import_module(module), name, stand_in)
    return seen


def _captured_run(args) -> None:
    with pytest.raises(Captured):
        main([str(a) for a in args])


# --- --set on every command that reads a config -------------------------------------------

def test_every_config_command_has_set() -> None:
    import typer.main

    from evomerge.cli import app

    group = typer.main.get_command(app)
    for name in ("merge", "evaluate", "analyze", "evolve", "scale", "report", "tune"):
        opts = {o for p in group.commands[name].params for o in p.opts}
        assert "--set" in opts, name


def test_merge_set_reaches_the_written_merge(small_zoo, tmp_path, capsys) -> None:
    out = tmp_path / "m"
    e1, e2 = list(small_zoo.expert_dirs.values())[:2]
    code, _, err = run_cli(["merge", "-e", e1, "-e", e2, "--method", "ties", "--set", "merge.params.density=0.35",
                            "--set", "seed=11", "--set", "merge.rank=4", "--out", out, "-q"], capsys)
    assert code == 0, err
    man = json.loads((out / "evomerge_manifest.json").read_text())
    assert man["method"] == "ties" and man["params"]["density"] == 0.35 and man["seed"] == 11


def test_merge_quiet_turns_the_libraries_bars_off_for_the_command_only(monkeypatch, small_zoo, tmp_path, capsys) -> None:
    """-q: transformers' and huggingface_hub's bars are off while the merge runs, and as they were
    afterwards, with no environment variable left: an in-process caller (a notebook) keeps its bars."""
    import os

    from huggingface_hub import utils as hub
    from transformers.utils import logging as hf_logging

    import evomerge.pipelines.merge.job as job

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    hub.enable_progress_bars()
    hf_logging.enable_progress_bar()
    before = (hub.are_progress_bars_disabled(), hf_logging.is_progress_bar_enabled())
    assert before[1]
    seen, real = [], job.run_merge

    def watched(*args, **kwargs):
        seen.append((hub.are_progress_bars_disabled(), hf_logging.is_progress_bar_enabled()))
        return real(*args, **kwargs)

    monkeypatch.setattr(job, "run_merge", watched)
    e1, e2 = list(small_zoo.expert_dirs.values())[:2]
    code, _, err = run_cli(["merge", "-e", e1, "-e", e2, "--method", "ties", "--rank", "4", "--out", tmp_path / "m", "-q"], capsys)
    assert code == 0, err
    assert seen == [(True, False)]
    assert (hub.are_progress_bars_disabled(), hf_logging.is_progress_bar_enabled()) == before
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ


def test_merge_flag_wins_over_set(monkeypatch, small_zoo, tmp_path) -> None:
    seen = _capture(monkeypatch, "evomerge.pipelines.merge.job", "run_merge")
    e1 = next(iter(small_zoo.expert_dirs.values()))
    _captured_run(["merge", "-e", e1, "--set", "seed=3", "--seed", "4", "--set", "rht.gamma=0.5", "--out", tmp_path / "m"])
    cfg = seen["args"][0]
    assert cfg.seed == 4 and cfg.rht.gamma == 0.5


def test_evaluate_set_reaches_the_evaluation(small_zoo, capsys) -> None:
    task = small_zoo.tasks[0]
    code, out, err = run_cli(["evaluate", "--small", "--tasks", task, "--set", "evaluation.max_samples=3",
                              "--set", "evaluation.metric=exact_match"], capsys)
    assert code == 0, err
    assert out.splitlines()[0] == "exact_match on validation (3 samples max per task)"


def test_analyze_set_reaches_the_analysis(monkeypatch, small_zoo, tmp_path) -> None:
    seen = _capture(monkeypatch, "evomerge.analysis", "analyze_pool")
    experts = [a for d in list(small_zoo.expert_dirs.values())[:2] for a in ("-e", d)]
    _captured_run(["analyze", *experts, "--out", tmp_path / "a", "--set", "seed=5", "--set", "rht.gamma=0.25",
                   "--set", "scale.delta=0.125"])
    kw = seen["kwargs"]
    assert kw["seed"] == 5 and kw["rht_cfg"].gamma == 0.25 and kw["delta"] == 0.125


def test_evolve_set_and_flags_reach_the_run(monkeypatch, tmp_path) -> None:
    seen = _capture(monkeypatch, "evomerge.pipelines.evolve.run", "run_evolve")
    _captured_run(["evolve", "--algo", "genome", "--out", tmp_path / "e", "--set", "genome.population=6",
                   "--set", "genome.generations=9", "--generations", "2", "--set", "swarm.max_iter=7"])
    cfg, algo = seen["args"][0], seen["args"][1]
    assert algo == "genome" and cfg.genome.population == 6 and cfg.genome.generations == 2 and cfg.swarm.max_iter == 7


def test_scale_set_reaches_the_run(monkeypatch, tmp_path) -> None:
    seen = _capture(monkeypatch, "evomerge.pipelines.scale.driver", "run_scale")
    _captured_run(["scale", "--small", "--out", tmp_path / "s", "--set", "scale.law_first_k=3", "--set", "seed=2",
                   "--no-progress"])
    cfg = seen["args"][0]
    assert cfg.scale.law_first_k == 3 and cfg.seed == 2


@pytest.mark.parametrize("flags, progress", [(["-q"], False), (["--no-progress"], False), ([], True)])
def test_scale_q_is_no_progress(monkeypatch, tmp_path, flags, progress) -> None:
    """``-q`` as on merge, analyze and zoo build: no progress bars."""
    seen = _capture(monkeypatch, "evomerge.pipelines.scale.driver", "run_scale")
    _captured_run(["scale", "--small", "--out", tmp_path / "s", *flags])
    assert seen["kwargs"]["progress"] is progress


def test_tune_set_reaches_the_study(monkeypatch, tmp_path) -> None:
    seen = _capture(monkeypatch, "evomerge.pipelines.tune.run", "run_tune")
    config = tmp_path / "t.yaml"
    config.write_text("tune:\n  n_trials: 2\n  space:\n    merge.params.lambda: {low: 0.1, high: 1.0}\n")
    _captured_run(["tune", "--config", config, "--small", "--out", tmp_path / "t", "--set", "tune.n_trials=5",
                   "--set", "evaluation.max_samples=7"])
    cfg = seen["args"][0]
    assert cfg.tune.n_trials == 5 and cfg.evaluation.max_samples == 7


def test_report_set_reaches_the_judging(monkeypatch, tmp_path, capsys) -> None:
    seen = _capture(monkeypatch, "evomerge.pipelines.scale.report", "write_report")
    _captured_run(["report", tmp_path, "--set", "scale.law_first_k=2"])
    assert seen["args"][1] == {"scale.law_first_k": 2}
    code, _, err = run_cli(["report", tmp_path, "--set", "merge.method=ties"], capsys)
    assert code == 2 and "--set merge.method" in err and "only how the cells are judged" in err


# --- a refused value names where it came from: the file, --set or the flag -------------------

@pytest.mark.parametrize("command", [["merge"], ["evaluate", "--small"], ["analyze"], ["evolve", "--algo", "genome"],
                                     ["evolve-scaling"], ["tune", "--config", "CONFIG"]])
def test_set_errors_name_set_on_every_command(command, tmp_path, capsys) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("seed: 1\n")
    args = [config if a == "CONFIG" else a for a in command]
    line = one_error([*args, "--set", "merge.densty=0.5", "--out", tmp_path / "o"], capsys)
    assert line == "error: --set: `merge.densty`: unknown key.", line
    assert not (tmp_path / "o").exists() and config.read_text() == "seed: 1\n"


def test_merge_errors_name_the_flag_the_file_or_both(small_zoo, tmp_path, capsys) -> None:
    experts = ["-e", small_zoo.expert_dirs["brackets"], "-e", small_zoo.expert_dirs["majority"]]
    out = tmp_path / "o"
    config, typo = tmp_path / "ties.yaml", tmp_path / "typo.yaml"
    config.write_text("merge:\n  method: ties\n  params: {density: 0.5}\n")
    typo.write_text("merge:\n  rnk: 4\n")
    cases = [
        (["--rank", "0"], "error: --rank: `merge.rank`: Input should be greater than 0. Got 0 instead."),
        (["--format", "f"], "error: --format: `merge.output_format`: Input should be 'auto', 'peft' or 'full'. Got 'f' instead."),
        (["--method", "nope"], "error: --method: unknown merge method `nope`;"),
        (["--param", "densty=0.5"], "error: --param: merge method `task_arithmetic` has no parameter `densty`;"),
        (["--config", typo, "--rank", "4"], f"error: {typo}: `merge.rnk`: unknown key."),
        # a check across keys: the method from one source, its parameter from another
        (["--set", "merge.params.density=1.5", "--method", "ties"], "error: --set + --method: merge method `ties`: `density`"),
        (["--config", config, "--param", "density=2"],
         f"error: {config} + --param: merge method `ties`: `density` must be in (0, 1]. Got 2.0 instead."),
        # flags that set other keys of the merge section are not blamed for a parameter
        (["--set", "merge.params.densty=0.5", "--rank", "4", "--space", "ab"],
         "error: --set: merge method `task_arithmetic` has no parameter `densty`;"),
        (["--config", config, "--set", "merge.params.density=2", "--rank", "4"],
         f"error: {config} + --set: merge method `ties`: `density` must be in (0, 1]. Got 2.0 instead."),
        (["--method", "ties", "--space", "concat", "--rank", "4"],
         "error: --space + --method: merge space `concat` needs a linear method"),
    ]
    for args, start in cases:
        line = one_error(["merge", *experts, *args, "--out", out], capsys)
        assert line.startswith(start), (args, line)
        assert not out.exists()


def test_evaluate_errors_name_the_flag(capsys) -> None:
    line = one_error(["evaluate", "--small", "--set", "evaluation.batch_size=0"], capsys)
    assert line.startswith("error: --set: `evaluation.batch_size`: Input should be greater than 0."), line
    line = one_error(["evaluate", "--small", "--metric", "x"], capsys)
    assert line.startswith("error: --metric: `evaluation.metric`: Input should be 'token_accuracy'"), line


def test_evolve_errors_name_the_flag(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    for args, start in ((["--actors", "0"], "error: --actors: `ray.num_actors`"),
                        (["--generations", "0"], "error: --generations: `genome.generations`")):
        line = one_error(["evolve", "--algo", "genome", "--small", *args, "--out", out], capsys)
        assert line.startswith(start), (args, line)
        assert not out.exists()


# --- --zoo PROFILE|PATH on the zoo subcommands ---------------------------------------------

def test_zoo_path_takes_zoo_and_small(capsys) -> None:
    from evomerge.zoo import zoo_root_in_use

    for args, profile in ((["--zoo", "small"], "small"), (["--small"], "small"), ([], "default"),
                          (["--zoo", "default"], "default"), (["--small", "--zoo", "small"], "small")):
        code, out, err = run_cli(["zoo", "path", *args], capsys)
        assert code == 0, err
        assert out.strip() == str(zoo_root_in_use(profile)), args


def test_zoo_subcommands_accept_a_folder_as_zoo(small_zoo, capsys) -> None:
    root = str(small_zoo.root)
    code, by_zoo, err = run_cli(["zoo", "info", "--zoo", root], capsys)
    assert code == 0, err
    code, by_arg, err = run_cli(["zoo", "info", root], capsys)
    assert code == 0, err
    code, by_small, err = run_cli(["zoo", "info", "--small"], capsys)
    assert code == 0, err
    assert by_zoo == by_arg == by_small and f"zoo: {root}" in by_zoo
    code, out, err = run_cli(["zoo", "verify", "--zoo", root], capsys)
    assert code == 0 and out.startswith("OK: ") and root in out, err
    code, out, err = run_cli(["zoo", "path", "--zoo", root], capsys)
    assert code == 0 and out.strip() == root, err


@pytest.mark.parametrize("cmd", ["info", "verify", "check"])
def test_zoo_disagreeing_values_are_refused_naming_both(cmd, small_zoo, tmp_path, capsys) -> None:
    other = tmp_path / "elsewhere"
    code, _, err = run_cli(["zoo", cmd, "--small", "--zoo", "default"], capsys)
    assert code == 2 and "--small" in err and "--zoo default" in err, err
    code, _, err = run_cli(["zoo", cmd, other, "--zoo", "small"], capsys)
    assert code == 2 and str(other) in err and "--zoo small" in err, err
    code, _, err = run_cli(["zoo", cmd, other, "--small"], capsys)
    assert code == 2 and str(other) in err and "--small" in err, err
    code, _, err = run_cli(["zoo", cmd, str(small_zoo.root), "--zoo", str(other)], capsys)
    assert code == 2 and str(small_zoo.root) in err and str(other) in err, err
    assert len(err.strip().splitlines()) == 1


def test_zoo_folder_and_agreeing_profile_are_one_zoo(small_zoo, capsys) -> None:
    code, out, err = run_cli(["zoo", "verify", str(small_zoo.root), "--small"], capsys)
    assert code == 0 and out.startswith("OK: "), err


def test_zoo_missing_folder_is_one_error(tmp_path, capsys) -> None:
    code, _, err = run_cli(["zoo", "info", "--zoo", tmp_path / "nope"], capsys)
    assert code == 2 and str(tmp_path / "nope") in err and len(err.strip().splitlines()) == 1, err


def test_zoo_help_shows_zoo_option(capsys) -> None:
    for cmd in ("path", "verify", "info", "check"):
        code, out, _ = run_cli(["zoo", cmd, "--help"], capsys)
        assert code == 0 and "--zoo" in out and "PROFILE|PATH" in out and "--small" in out, cmd



# --- evolve-scaling: the measurement behind jobs/scaling.py -----------------------------------

def test_evolve_scaling_bad_actor_counts_refused_before_ray(tmp_path, capsys) -> None:
    for bad in ("1,x", "0,2"):
        code, _, err = run_cli(["evolve-scaling", "--small", "--actors", bad, "--out", tmp_path / "s"], capsys)
        assert code == 2 and f"--actors '{bad}'" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_evolve_scaling_runs_and_writes_the_table(tmp_path, capsys) -> None:
    import pyarrow.parquet as pq

    out = tmp_path / "s"
    code, stdout, err = run_cli(["evolve-scaling", "--small", "--actors", "1,2", "--out", out,
                                 "--set", "genome.population=4", "--set", "genome.generations=1",
                                 "--set", "evaluation.max_samples=8", "--set", "ray.cpus_per_actor=0.5"], capsys)
    assert code == 0, err
    t = pq.read_table(out / "scaling.parquet").to_pylist()
    assert [r["n_actors"] for r in t] == [1, 2]
    assert t[0]["evaluations"] == t[1]["evaluations"] > 0  # the same run, the same work
    assert t[0]["speedup"] == 1.0 and t[1]["efficiency"] == pytest.approx(t[1]["speedup"] / 2)
    assert (out / "scaling.png").read_bytes()[:4] == b"\x89PNG" and not (out / "runs").exists()
    assert "table:" in stdout
