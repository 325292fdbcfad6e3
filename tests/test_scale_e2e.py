"""End to end: `evomerge scale` on the small zoo with a tiny config, then `evomerge report`.

Checks that the Parquet tables, the PNG figures and report.md exist and agree with each other
and with an independent recomputation (per-task scores -> fitness; sigma^2/rho -> n_max).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from evomerge.cli import main
from evomerge.theory import adaptive_delta, n_max

pytestmark = pytest.mark.ray

TINY = {
    "evaluation": {"max_samples": 24, "batch_size": 24},
    "scale": {
        "methods": ["task_arithmetic", "ties"],
        "with_rht": True,
        "seeds": [0, 1],
        "order": "low_correlation",
        "k_max": 3,
        "delta": "adaptive",
        "stop": True,
        "hist_samples": 500,
    },
    "ray": {"num_actors": 2},
}


@pytest.fixture(scope="module")
def run(small_zoo, tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    cfg_path = root / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump({**TINY, "zoo_dir": str(small_zoo.root)}))
    out = root / "run"
    rc = main(["scale", "--small", "--config", str(cfg_path), "--out", str(out), "--no-progress"])
    assert rc == 0
    return out, small_zoo


def _fitness(out):
    return pq.read_table(out / "tables" / "fitness.parquet").to_pandas()


def test_outputs_exist(run):
    out, _ = run
    for name in ("scores", "fitness", "peaks", "scaling_fits", "theory"):
        assert (out / "tables" / f"{name}.parquet").is_file(), name
    for fig in ("figures/fitness_vs_k.png", "figures/weight_hist_ties.png",
                "analysis/pca_cumulative.png", "analysis/principal_angles.png"):
        data = (out / fig).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, fig
    md = (out / "report.md").read_text()
    for fig in ("figures/fitness_vs_k.png", "analysis/principal_angles.png"):
        assert f"]({fig})" in md


def test_scores_table_has_one_row_per_cell_seed_task_split(run):
    out, zoo = run
    scores = pq.read_table(out / "tables" / "scores.parquet").to_pandas()
    assert not scores.duplicated(["k", "method", "rht", "seed", "task", "split"]).any()
    assert set(scores["task"]) == set(zoo.tasks)
    assert set(scores["split"]) == {"validation", "test"}
    merges = scores[scores["kind"] == "merge"]
    per_cell = merges.groupby(["k", "method", "rht", "seed"]).size()
    assert (per_cell == 2 * len(zoo.tasks)).all()
    assert set(merges["seed"]) == {0, 1} and set(merges["rht"]) == {False, True}
    # the union target covers exactly the tasks of the merged experts
    for _, r in merges.drop_duplicates(["k", "experts"]).iterrows():
        sub = merges[(merges["k"] == r["k"]) & (merges["experts"] == r["experts"])]
        assert set(sub[sub["in_subset"]]["task"]) == set(r["experts"].split(","))
        assert len(r["experts"].split(",")) == r["k"]
    assert {0, 1} <= set(scores["k"])  # base model and single expert rows
    assert scores["score"].between(0, 1).all()


def test_fitness_is_the_mean_of_the_per_task_scores(run):
    out, _ = run
    scores = pq.read_table(out / "tables" / "scores.parquet").to_pandas()
    fit = _fitness(out)
    sel = scores[(scores["method"] == "ties") & (scores["k"] == 2) & scores["rht"] & (scores["seed"] == 1)
                 & (scores["split"] == "test")]
    row_all = fit[(fit["method"] == "ties") & (fit["k"] == 2) & fit["rht"] & (fit["seed"] == 1)
                  & (fit["split"] == "test") & (fit["target"] == "all")]
    row_union = fit[(fit["method"] == "ties") & (fit["k"] == 2) & fit["rht"] & (fit["seed"] == 1)
                    & (fit["split"] == "test") & (fit["target"] == "union")]
    assert row_all["fitness"].item() == pytest.approx(sel["score"].mean())
    assert row_union["fitness"].item() == pytest.approx(sel[sel["in_subset"]]["score"].mean())
    # deterministic method without RHT: both seeds share one computation, so identical rows
    ta = fit[(fit["method"] == "task_arithmetic") & ~fit["rht"] & (fit["k"] == 2)]
    assert ta.groupby(["split", "target"])["fitness"].nunique().eq(1).all()


def test_stop_k_equals_theory_from_the_pools_sigma_rho(run):
    out, zoo = run
    import torch

    from evomerge.experts import load_pool

    plan = json.loads((out / "plan.json").read_text())
    # sigma^2 and rho recomputed independently with numpy from the flattened task vectors
    pool = load_pool([zoo.expert_dirs[t] for t in zoo.tasks], zoo.base_dir, names=zoo.tasks)
    flat = torch.cat([pool.stacked(k).reshape(len(pool), -1) for k in pool.keys()], dim=1).double().numpy()
    sigma2 = flat.var(axis=1).mean()
    c = np.corrcoef(flat)
    rho = (c.sum() - len(c)) / (len(c) * (len(c) - 1))
    assert plan["stop"]["sigma2"] == pytest.approx(sigma2, rel=1e-6)
    assert plan["stop"]["rho"] == pytest.approx(rho, abs=1e-6)
    expected = n_max(sigma2, rho, adaptive_delta(sigma2, rho, len(pool)))
    assert plan["stop"]["n_max"] == expected
    fit = _fitness(out)
    assert fit[fit["kind"] == "merge"]["k"].max() == min(3, expected)
    report = json.loads((out / "report.json").read_text())
    assert report["n_max"] == expected
    md = (out / "report.md").read_text()
    if expected <= 3:
        assert f"The stop criterion fired at n_max = {expected}: the run stopped adding experts at k = {expected}." in md
    else:
        assert f"The run reached its largest k = 3 (pool size / `scale.k_max`) before the stop criterion fired (n_max = {expected})" in md


def test_report_peaks_equal_the_argmax_of_the_table(run):
    out, _ = run
    fit = _fitness(out)
    md = (out / "report.md").read_text()
    section = md.split("### Target `all`")[1].split("###")[0]
    val = fit[(fit["target"] == "all") & (fit["split"] == "validation") & (fit["kind"] == "merge")]
    for (method, rht), g in val.groupby(["method", "rht"]):
        means = g.groupby("k")["fitness"].mean()
        peak = int(means.index[np.argmax(means.to_numpy())])
        label = f"{method}+rht" if rht else method
        m = re.search(rf"^\| {re.escape(label)} \| (\d+) \| ([0-9.]+) ", section, re.M)
        assert m, label
        assert int(m.group(1)) == peak
        assert float(m.group(2)) == pytest.approx(means.max(), abs=5e-4)


def test_report_command_regenerates(run):
    out, _ = run
    before = (out / "report.md").read_text()
    (out / "report.md").unlink()
    (out / "figures" / "fitness_vs_k.png").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == before
    assert (out / "figures" / "fitness_vs_k.png").is_file()


def test_rerun_skips_everything_and_config_change_is_refused(run, tmp_path):
    out, zoo = run
    from evomerge.config import load_config
    from evomerge.driver import run_scale
    from evomerge.errors import OutputExistsError

    cfg = load_config(out / "config.yaml")
    res = run_scale(cfg, out, zoo=zoo, progress=False)
    assert res.cells_run == 0 and res.cells_skipped == res.cells_total
    changed = cfg.model_copy(update={"seed": 5})
    with pytest.raises(OutputExistsError, match="different config"):
        run_scale(changed, out, zoo=zoo, progress=False)


@pytest.mark.slow  # starts a second set of actors (~75 s on the shared 2-core machine)
def test_no_stop_extends_the_run_past_n_max(run):
    """`--no-stop` (here with k_max 4) on the finished run computes only the new k."""
    out, zoo = run
    from evomerge.config import config_from_dict, load_config
    from evomerge.driver import run_scale

    cfg = load_config(out / "config.yaml")
    n_max_ = json.loads((out / "plan.json").read_text())["stop"]["n_max"]
    data = cfg.model_dump(mode="json")
    data["scale"]["k_max"] = 4
    res = run_scale(config_from_dict(data), out, zoo=zoo, stop=False, progress=False)
    new_k = set(range(min(3, n_max_) + 1, 5))  # the first run went to min(3, n_max)
    per_k = 6  # task_arithmetic: plain (seed-free) + rht x 2 seeds; ties: the same
    assert res.cells_run == per_k * len(new_k)
    fit = _fitness(out)
    assert fit[fit["kind"] == "merge"]["k"].max() == 4
    md = (out / "report.md").read_text()
    assert f"Run with `--no-stop` to k = 4; the stop criterion would have fired at n_max = {n_max_}." in md
