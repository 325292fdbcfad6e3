"""`evomerge analyze` on real peft adapters of a tiny LlamaForCausalLM built from a config."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from evomerge.cli import main
from evomerge.experts.pool import load_pool
from evomerge.theory import estimate_sigma_rho, n_max
from test_experts_fixtures import make_base, make_lora


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze_cli")
    make_base(root / "base", tokenizer=False)
    paths = []
    for i in range(4):
        make_lora(root / "base", root / f"lora{i}", seed=10 + i, r=4, alpha=8)
        paths.append(root / f"lora{i}")
    return root, paths


def test_cli_analyze_prints_and_writes_consistent_numbers(adapters, capsys):
    root, paths = adapters
    out = root / "out"
    argv = ["analyze", "--out", str(out), "--delta", "0.0005", "-q"]
    for p in paths:
        argv += ["--experts", str(p)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    pool = load_pool(paths)
    sigma2, rho, _ = estimate_sigma_rho(pool.stacked(k) for k in pool.keys())
    assert summary["sigma2"] == pytest.approx(sigma2, rel=1e-9)
    assert summary["rho"] == pytest.approx(rho, abs=1e-9)
    assert summary["n_max"] == n_max(sigma2, rho, 0.0005)
    assert summary["kind"] == "lora" and summary["names"] == [p.name for p in paths]
    assert f"n_max:              {summary['n_max']}" in printed
    assert "PCA 95% components: " in printed and "mean principal angle:" in printed
    # 4 independent random adapters: the PCA count is the 3-component ceiling, and the printout says so
    flat = np.concatenate([pool.stacked(k).double().reshape(4, -1).numpy() for k in pool.keys()], axis=1)
    sv2 = np.linalg.svd(flat - flat.mean(0), compute_uv=False) ** 2
    assert summary["pca_components"] == int(np.searchsorted(np.cumsum(sv2) / sv2.sum(), 0.95 - 1e-12) + 1) == 3
    assert ("PCA 95% components: 3   (the ceiling: 4 centred experts span at most 3 directions; "
            "no low-rank structure shown)") in printed
    angles = pq.read_table(out / "layer_angles.parquet").to_pylist()
    assert {r["layer"] for r in angles} == {0, 1}
    assert len(angles) == len(pool.keys()) * 6  # 4 experts -> 6 pairs per adapted weight
    # independent random adapters of rank 4 in a 32/16-dim space: angles well away from 0
    assert 20 < summary["mean_principal_angle"] < 90
    # ... at the level of random subspaces of these shapes (rank 4 in 32 / 16 dimensions), printed beside it
    random_level = summary["principal_angle_random_deg"]
    assert 40 < random_level < 80 and abs(summary["mean_principal_angle"] - random_level) < 5
    assert f"(random subspaces of the same shapes: {random_level:.1f} deg)" in printed
    # refuses to overwrite, then does with --overwrite
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0


def test_cli_analyze_from_config(adapters, capsys):
    root, paths = adapters
    cfg = {"seed": 4, "experts": {"experts": [{"path": str(p), "name": f"task{i}"} for i, p in enumerate(paths)]},
           "scale": {"delta": "adaptive"}}
    cfg_path = root / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = root / "out_cfg"
    assert main(["analyze", "--config", str(cfg_path), "--out", str(out), "-q"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["names"] == ["task0", "task1", "task2", "task3"]
    assert summary["seed"] == 4
    assert summary["delta_mode"].startswith("adaptive")
    assert summary["n_max"] == n_max(summary["sigma2"], summary["rho"], summary["delta"])
    pca = pq.read_table(out / "pca.parquet").column("cumulative").to_numpy()
    assert np.all(np.diff(pca) >= -1e-12) and pca[-1] == pytest.approx(1.0)


def test_cli_analyze_errors(adapters, tmp_path, capsys):
    root, paths = adapters
    assert main(["analyze", "--out", str(tmp_path / "x")]) == 2
    assert "no experts" in capsys.readouterr().err
    assert main(["analyze", "--experts", str(paths[0]), "--experts", str(paths[1]), "--out", str(tmp_path / "y"),
                 "--delta", "-1"]) == 2
    assert "--delta" in capsys.readouterr().err
    assert main(["analyze", "--experts", str(tmp_path / "missing"), "--out", str(tmp_path / "z")]) == 2
    assert "not found" in capsys.readouterr().err
