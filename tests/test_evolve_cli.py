"""``evomerge evolve``: refusals (in-process, no Ray) and one real run in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from evomerge.cli import main


def write_cfg(path, **sections):
    data = {"evaluation": {"max_samples": 20, "tasks": ["rev_digits", "sort_digits"]},
            "genome": {"population": 3, "generations": 1, "cross_rate": 1.0, "ind_mut_rate": 0.5, "space": "ab"}}
    data.update(sections)
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "args, words",
    [
        (["--algo", "cmaes"], ["--algo", "cmaes"]),
        (["--algo", "genome", "--generations", "0"], ["genome.generations", "Got 0"]),
        (["--algo", "genome", "--actors", "0"], ["ray.num_actors", "Got 0"]),
    ],
)
def test_bad_arguments_refused_with_a_clear_message(tmp_path, capsys, args, words):
    rc = main(["evolve", "--out", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:")
    for w in words:
        assert w in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "section, key",
    [({"genome": {"population": 1}}, "genome.population"), ({"genome": {"cross_rate": 2}}, "genome.cross_rate"),
     ({"ray": {"gpus_per_actor": -1}}, "ray.gpus_per_actor")],
)
def test_impossible_config_refused(tmp_path, capsys, section, key):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(section))
    rc = main(["evolve", "--algo", "genome", "--config", str(cfg), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and f"`{key}`" in err and str(cfg) in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_cli_run_prints_progress_and_writes_adapter(tmp_path, small_zoo):
    cfg = write_cfg(tmp_path / "cfg.yaml")
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "evomerge", "evolve", "--algo", "genome", "--config", str(cfg), "--out", str(out),
           "--actors", "1", "--seed", "3"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "round 0 (generation 0): best" in p.stderr and " mean " in p.stderr
    assert "best adapter:" in p.stdout
    assert json.loads((out / "best_adapter" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    result = json.loads((out / "result.json").read_text())
    assert result["best_id"] in p.stdout and set(result["best_test_per_task"]) == {"rev_digits", "sort_digits"}
    # a second call without --resume is refused; with --resume it finishes at once, same result
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "result.json").read_text())["best_fitness"] == result["best_fitness"]
