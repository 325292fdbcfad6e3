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


@pytest.mark.slow
def test_cli_run_over_lora_experts_in_delta_space_writes_a_peft_adapter(tmp_path, small_zoo):
    """The default space (delta) over the six rank-8 LoRA experts: ``best_adapter/`` is a peft
    adapter (rank 48) that loads on the zoo's base and changes its weights by the written task
    vector, up to the error reported."""
    import shutil

    from safetensors.torch import load_file
    from test_evolve_outputs import peft_delta, relative_error

    cfg = write_cfg(tmp_path / "cfg.yaml", genome={"population": 3, "generations": 1, "init_sums": [1.0],
                                                     "init_merges": ["ties"]})
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "evomerge", "evolve", "--algo", "genome", "--config", str(cfg), "--out", str(out),
           "--actors", "1", "--seed", "3"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    svd = result["adapter_svd"]
    assert f"best adapter: {out / 'best_adapter'} (rank 48, SVD of the task vector: relative error" in p.stdout
    assert f"best task vector: {out / 'best_task_vector'}" in p.stdout
    assert result["adapter_dir"] == str(out / "best_adapter")
    assert result["task_vector_dir"] == str(out / "best_task_vector")
    dense = load_file(str(out / "best_task_vector" / "task_vector.safetensors"))
    err = relative_error(peft_delta(small_zoo.base_dir, out / "best_adapter"), dense)  # same keys, or it fails
    assert err == pytest.approx(svd["relative_error"], rel=1e-3, abs=1e-6)
    # a run directory of an older evomerge (no best_adapter/, `adapter_dir` naming the task vector):
    # --resume writes the adapter and a result.json whose keys name what they point to
    shutil.rmtree(out / "best_adapter")
    old = {k: v for k, v in result.items() if k not in ("task_vector_dir", "adapter_svd")}
    (out / "result.json").write_text(json.dumps({**old, "adapter_dir": str(out / "best_task_vector")}))
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = json.loads((out / "result.json").read_text())
    assert {k: again[k] for k in ("adapter_dir", "task_vector_dir", "adapter_svd", "best_id")} == {
        k: result[k] for k in ("adapter_dir", "task_vector_dir", "adapter_svd", "best_id")}
    assert (out / "best_adapter" / "adapter_config.json").is_file()
