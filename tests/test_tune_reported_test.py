"""One rule for a reported test score: a returned model's test score is over every test row (the
search's fitness, validation, keeps ``evaluation.max_samples`` rows, its budget), whether evolve,
a genome/swarm study or a merge study reports it; and a study's ``best_config.yaml`` lists its
experts whatever the objective, so that ``evolve`` on it runs on the study's pool (real CLI runs,
real Ray started by the commands, real SQLite studies, the small zoo; every score checked against
an independent evaluation of the written result on the whole test split)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from _cli_helpers import run_cli

MAX_SAMPLES = 8  # validation rows per task; the small zoo's test splits hold far more


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    # (RAY_AUTH_MODE is left as the other tests leave it: these commands start Ray in the test
    # process, and with the mode changed between two starts in one process the driver refused
    # the new cluster's calls ("Missing authorization header" in its log) and the GCS destroyed
    # the first actor as if its owner had died: the slow suite's one flake, after test_tune_pruning)
    monkeypatch.delenv("EVOMERGE_OPTUNA_STORAGE", raising=False)


def _config(tmp_path: Path, data: dict, name: str) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _test_on_every_row(small_zoo, folder: Path) -> tuple[float, int]:
    """The test fitness of the adapter in ``folder`` over every test row, by the evaluator alone
    (as ``evomerge evaluate --split test`` with --max-samples at the split's size); and the rows."""
    from evomerge.evaluation import Evaluator
    from evomerge.experts.peft_io import load_peft_adapter

    ev = Evaluator.from_zoo(small_zoo, max_samples=None)
    rows = min(len(ev.data[t]["test"]) for t in ev.tasks)
    return ev.evaluate(load_peft_adapter(folder).modules, split="test").fitness, rows


def test_a_merge_studys_test_fitness_is_on_every_test_row(tmp_path, small_zoo, capsys) -> None:
    cfg = {"seed": 0, "merge": {"method": "task_arithmetic", "params": {"lambda": 1.0}},
           "evaluation": {"max_samples": MAX_SAMPLES},
           "tune": {"objective": "merge", "sampler": "random", "n_trials": 1,
                    "space": {"merge.params.lambda": {"low": 0.4, "high": 0.6}}}}
    code, _, err = run_cli(["tune", "--config", _config(tmp_path, cfg, "t.yaml"), "--small", "--out",
                            tmp_path / "study"], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "study" / "summary.json").read_text())
    code, _, err = run_cli(["merge", "--config", tmp_path / "study" / "best_config.yaml", "--out", tmp_path / "m",
                            "-q"], capsys)
    assert code == 0, err  # (a full checkpoint: the dense merge as it is)
    # `evomerge evaluate` of the written model on every test row (the split's size as --max-samples)
    rows = max(len(small_zoo.load_tasks([t], splits=("test",))[t]["test"]) for t in small_zoo.tasks)
    assert rows > MAX_SAMPLES
    code, out, err = run_cli(["evaluate", "-e", tmp_path / "m", "--small", "--split", "test", "--max-samples", rows],
                             capsys)
    assert code == 0, err
    every_row = float(next(line for line in out.splitlines() if line.startswith("m ")).split()[-1])
    assert summary["best_test_fitness"] == pytest.approx(every_row, abs=6e-4)  # (printed to 3 decimals)


@pytest.mark.slow  # a one-trial GENOME study, an evolve run, an evaluation: about 40 s on 2 cores
def test_a_genome_studys_best_config_reruns_its_pool_and_every_test_is_on_every_row(tmp_path, small_zoo,
                                                                                    capsys) -> None:
    cfg = {"seed": 0, "evaluation": {"max_samples": MAX_SAMPLES},
           "genome": {"population": 2, "generations": 1, "early_stop_iter": 1},
           "ray": {"num_actors": 1, "cpus_per_actor": 1},
           "tune": {"objective": "genome", "pruner": "none", "sampler": "random", "n_trials": 1,
                    "space": {"genome.cross_rate": {"low": 0.1, "high": 0.9},
                              "experts.count": {"type": "int", "low": 3, "high": 4}}}}
    study = tmp_path / "study"
    code, _, err = run_cli(["tune", "--config", _config(tmp_path, cfg, "tg.yaml"), "--small", "--out", study], capsys)
    assert code == 0, err
    summary = json.loads((study / "summary.json").read_text())
    k = summary["best_params"]["experts.count"]
    assert summary["best_experts"] == list(small_zoo.tasks)[:k]

    # the best config lists the study's experts, by zoo reference (was: `experts: []`, so that
    # evolve ran on whatever zoo its own default or --zoo picked)
    best = yaml.safe_load((study / "best_config.yaml").read_text())
    assert [e["name"] for e in best["experts"]["experts"]] == summary["best_experts"]
    assert [e["path"] for e in best["experts"]["experts"]] == [f"zoo:small/experts/{n}" for n in summary["best_experts"]]
    assert best["experts"]["base"] == "zoo:small/base"

    # evolve on it, with --zoo default (10 experts): the study's k small-zoo experts all the same
    run = tmp_path / "evolve"
    code, out, err = run_cli(["evolve", "--algo", "genome", "--config", study / "best_config.yaml", "--out", run,
                              "--zoo", "default"], capsys)
    assert code == 0, err
    assert json.loads((run / "run.json").read_text())["experts"] == summary["best_experts"]
    result = json.loads((run / "result.json").read_text())
    assert result["best_fitness"] == pytest.approx(summary["best_value"], abs=1e-9)  # the trial, run again

    # one test score: the trial's, evolve's, and the evaluator's on every test row of the adapter
    every_row, rows = _test_on_every_row(small_zoo, run / "best_adapter")
    assert rows > MAX_SAMPLES
    assert result["best_test_fitness"] == pytest.approx(every_row, abs=1e-3)  # was: on the first 8 rows
    assert summary["best_test_fitness"] == pytest.approx(result["best_test_fitness"], abs=1e-9)
    assert f"test (reported only): fitness {result['best_test_fitness']:.4f}" in out
