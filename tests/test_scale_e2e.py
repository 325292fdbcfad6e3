"""End to end: `evomerge scale` on the small zoo with a tiny config, then `evomerge report`.

Checks that the Parquet tables, the PNG figures, report.md and report.json exist and agree with
each other and with independent recomputations: per-task scores -> fitness; the pool's
variances and correlations (numpy) -> Theorem 1's k; the per-seed argmax of the fitness table
-> the measured peaks of the rule table; Fisher and RegMean of one expert -> that expert.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from evomerge.cli import main

pytestmark = pytest.mark.ray

TINY = {
    "evaluation": {"max_samples": 24, "batch_size": 64},  # test: all 200 rows a task, 4 passes, not 9
    "scale": {
        "methods": ["task_arithmetic", "dare_ties", "fisher", "regmean"],
        "with_rht": False,
        "seeds": [0, 1],
        "order": "gain",
        "k_max": 4,
        "law_first_k": 3,
        "stats_samples": 8,
        "hist_samples": 500,
    },
    "ray": {"num_actors": 2},
}


@pytest.fixture(scope="module")
def run(small_zoo, tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    cfg_path = root / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(TINY))  # --small: the same zoo as the small_zoo fixture
    out = root / "run"
    rc = main(["scale", "--small", "--config", str(cfg_path), "--out", str(out), "--no-progress"])
    assert rc == 0
    return out, small_zoo


def _fitness(out):
    return pq.read_table(out / "tables" / "fitness.parquet").to_pandas()


def _plan(out):
    return json.loads((out / "plan.json").read_text())


def test_outputs_exist(run):
    out, _ = run
    for name in ("scores", "fitness", "peaks", "scaling_fits", "theory", "rules"):
        assert (out / "tables" / f"{name}.parquet").is_file(), name
    for fig in ("figures/fitness_vs_k.png", "figures/weight_hist_dare_ties.png",
                "analysis/pca_cumulative.png", "analysis/principal_angles.png"):
        data = (out / fig).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, fig
    md = (out / "report.md").read_text()
    for fig in ("figures/fitness_vs_k.png", "analysis/principal_angles.png"):
        assert f"]({fig})" in md
    for name in out.joinpath("stats").iterdir():  # Fisher / RegMean statistics, one file per expert
        assert name.suffix == ".safetensors"
    assert sorted(p.stem for p in (out / "stats").iterdir()) == sorted(_plan(out)["experts"])


def test_scores_table_has_one_row_per_cell_seed_task_split(run):
    out, zoo = run
    scores = pq.read_table(out / "tables" / "scores.parquet").to_pandas()
    assert not scores.duplicated(["cell", "seed", "task", "split"]).any()
    assert set(scores["task"]) == set(zoo.tasks)
    assert set(scores["split"]) == {"validation", "test"}
    merges = scores[scores["kind"] == "merge"]
    per_cell = merges.groupby(["k", "method", "rht", "seed"]).size()
    assert (per_cell == 2 * len(zoo.tasks)).all()
    assert set(merges["seed"]) == {0, 1} and set(merges["k"]) == {1, 2, 3, 4}  # registry merges to k_max
    for _, r in merges.drop_duplicates(["k", "experts"]).iterrows():
        sub = merges[(merges["k"] == r["k"]) & (merges["experts"] == r["experts"])]
        assert set(sub[sub["in_subset"]]["task"]) == set(r["experts"].split(","))
        assert len(r["experts"].split(",")) == r["k"]
    assert {0, 1} <= set(scores["k"])
    assert scores["score"].between(0, 1).all()
    assert (scores["cross_entropy"] > 0).all()


def test_fitness_is_the_mean_of_the_per_task_scores(run):
    out, _ = run
    scores = pq.read_table(out / "tables" / "scores.parquet").to_pandas()
    fit = _fitness(out)
    sel = scores[(scores["method"] == "dare_ties") & (scores["k"] == 2) & (scores["seed"] == 1) & (scores["split"] == "test")
                 & (scores["kind"] == "merge")]
    row = fit[(fit["method"] == "dare_ties") & (fit["k"] == 2) & (fit["seed"] == 1) & (fit["split"] == "test")
              & (fit["kind"] == "merge")].set_index("target")
    assert row.loc["all", "fitness"] == pytest.approx(sel["score"].mean())
    assert row.loc["union", "fitness"] == pytest.approx(sel[sel["in_subset"]]["score"].mean())
    assert row.loc["all", "cross_entropy"] == pytest.approx(sel["cross_entropy"].mean())


def test_fisher_and_regmean_of_one_expert_are_that_expert(run):
    """k = 1: a Fisher-weighted mean of one expert, and RegMean's least squares of one, are the expert."""
    out, _ = run
    f = _fitness(out)
    k1 = f[(f["k"] == 1) & (f["kind"] == "merge") & (f["target"] == "all")].groupby(["method", "split"])["fitness"].mean()
    for split in ("validation", "test"):
        assert k1[("fisher", split)] == pytest.approx(k1[("task_arithmetic", split)], abs=1e-6)
        assert k1[("regmean", split)] == pytest.approx(k1[("task_arithmetic", split)], abs=2e-3)
    k3 = f[(f["k"] == 3) & (f["kind"] == "merge") & (f["target"] == "all") & (f["split"] == "validation")]
    by = k3.groupby("method")["fitness"].mean()
    assert by["fisher"] != pytest.approx(by["task_arithmetic"], abs=1e-6)  # the statistics do something


def test_gain_order_and_theorem1_from_independent_numpy(run):
    out, zoo = run
    import torch

    from evomerge.experts import load_pool

    plan = _plan(out)
    gains = json.loads((out / "expert_gains.json").read_text())["gain"]
    order = plan["orders"]["0"]
    assert [gains[n] for n in order] == sorted(gains.values(), reverse=True)
    pool = load_pool([zoo.expert_dirs[t] for t in zoo.tasks], zoo.base_dir, names=zoo.tasks)
    flat = torch.cat([pool.stacked(k).reshape(len(pool), -1) for k in pool.keys()], dim=1).double().numpy()
    np.testing.assert_allclose(plan["variances"], flat.var(axis=1), rtol=1e-6)
    np.testing.assert_allclose(plan["correlation"], np.corrcoef(flat), atol=1e-6)
    idx = [zoo.tasks.index(n) for n in order][:4]
    cov = np.cov(flat[idx], bias=True)

    def fired(weights):
        v = [weights(k) @ cov[:k, :k] @ weights(k) for k in range(1, 5)]
        delta = 0.1 * (v[0] - v[1])  # the default: relative, 0.1 of the first drop
        return next((k for k in range(1, 4) if v[k - 1] - v[k] < delta), 4) if v[0] > v[1] else 1

    rules = [r for r in json.loads((out / "report.json").read_text())["rules"] if r["rule"] == "theorem1"]
    expect = {"task_arithmetic": fired(lambda k: np.ones(k)), "fisher": fired(lambda k: np.full(k, 1 / k))}
    assert expect["task_arithmetic"] == 1  # a sum adds variance from the second expert on
    for r in rules:
        if r["method"] in expect:
            assert r["fired_k"] == expect[r["method"]], r


def test_rule_table_agrees_with_the_fitness_table(run):
    out, _ = run
    fit = _fitness(out)
    report = json.loads((out / "report.json").read_text())
    rules = report["rules"]
    assert {r["rule"] for r in rules} == {"theorem1", "online", "law_k<=3", "pca95"}
    assert set(rules[0]) == {"rule", "method", "target", "fired_k", "peak_k", "error"}
    table = pq.read_table(out / "tables" / "rules.parquet").to_pandas()
    assert len(table) == len(rules)
    md = (out / "report.md").read_text()
    val = fit[(fit["split"] == "validation") & (fit["kind"] == "merge")]
    col = {"all": ("all", "fitness"), "union": ("union", "fitness"), "all/ce": ("all", "cross_entropy")}
    checked = 0
    for r in rules:
        target, value = col[r["target"]]
        g = val[(val["method"] == r["method"]) & (val["target"] == target)]
        per_seed = []
        for _, s in g.groupby("seed"):
            s = s.sort_values("k")
            best = s[value].min() if value == "cross_entropy" else s[value].max()
            per_seed.append(int(s[s[value] == best]["k"].min()))
        assert r["peak_k"] == pytest.approx(np.mean(per_seed)), r
        if r["fired_k"] is not None:
            assert r["error"] == pytest.approx(r["fired_k"] - r["peak_k"])
        fired = f"{r['fired_k']:g}" if isinstance(r["fired_k"], float) else str(r["fired_k"])
        row = rf"^\| {re.escape(r['rule'])} \| {re.escape(r['method'])} \| {re.escape(r['target'])} \| {re.escape(fired)}"
        assert re.search(row, md, re.M), row
        detail = table[(table["rule"] == r["rule"]) & (table["method"] == r["method"]) & (table["target"] == r["target"])]
        assert (detail["k_first"].item(), detail["k_last"].item()) == (g["k"].min(), g["k"].max()), r
        checked += 1
    assert checked >= 4 * 4 * 3 - 4  # 4 rules x 4 methods x 3 targets (the law may lack a tolerance)
    pca = json.loads((out / "analysis" / "summary.json").read_text())["pca_components"]
    assert all(r["fired_k"] == pca for r in rules if r["rule"] == "pca95")


def test_correlated_pairs_come_from_the_zoo_domains(run):
    out, zoo = run
    plan = _plan(out)
    names = plan["experts"]
    related = {frozenset(p) for p in zoo.related_pairs}
    assert {frozenset(names[i] for i in p) for p in plan["pairs"]["related"]} == related
    for p in plan["pairs"]["unrelated"]:
        a, b = (names[i] for i in p)
        assert frozenset((a, b)) not in related and zoo.domains[a] != zoo.domains[b]
    pairs = json.loads((out / "report.json").read_text())["pairs"]
    assert {p["kind"] for p in pairs} == {"related", "unrelated"}
    assert "## Correlated pairs" in (out / "report.md").read_text()


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


def test_glance_table_agrees_with_the_peaks_and_the_rules(run):
    """The report's first table (all tasks, without RHT) repeats the peaks of the fitness table
    and the k where the rule table's rules fired: nothing in it is computed a second way."""
    out, _ = run
    fit = _fitness(out)
    md = (out / "report.md").read_text()
    section = md.split("## At a glance")[1].split("\n## ")[0]
    rules = {(r["rule"], r["method"]): r for r in json.loads((out / "report.json").read_text())["rules"]
             if r["target"] == "all"}
    val = fit[(fit["target"] == "all") & (fit["split"] == "validation") & (fit["kind"] == "merge") & ~fit["rht"]]
    rows = 0
    for method, g in val.groupby("method"):
        means = g.groupby("k")["fitness"].mean()
        # (the evaluation-noise columns after the validation value: its interval, p(best), k within noise)
        m = re.search(rf"^\| {re.escape(method)} \| (\d+) \| ([0-9.]+)(?: \[[^]]+\] \| [^|]+ \| [^|]+)? \| [^|]+ \| (\d+) "
                      r"\| ([^|]+) \| ([^|]+) \| ([^|]+) \|$", section, re.M)
        assert m, method
        assert int(m.group(1)) == int(means.index[np.argmax(means.to_numpy())])
        assert float(m.group(2)) == pytest.approx(means.max(), abs=5e-4)
        assert int(m.group(3)) == int(g["k"].max())
        for col, rule in ((4, "online"), (5, "law_k<=3"), (6, "theorem1")):
            r = rules.get((rule, method))
            if r is not None and r["fired_k"] is not None:
                assert m.group(col).strip().split()[0] == f"{r['fired_k']:g}", (method, rule)
        rows += 1
    assert rows == 4


def test_report_command_regenerates(run):
    """`evomerge report` draws every figure and computes all the noise in its own process; the
    run did part of its report in a side process (report_side: the weight histograms before the
    last cell, the validation noise and the fitness figure after it): the same bytes, the same
    report."""
    out, _ = run
    before = (out / "report.md").read_text()
    report_json = (out / "report.json").read_text()
    figures = {p.name: p.read_bytes() for p in (out / "figures").glob("*.png")}
    assert {"fitness_vs_k.png", "weight_hist_dare_ties.png"} <= set(figures)
    (out / "report.md").unlink()
    for name in figures:
        (out / "figures" / name).unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == before
    assert (out / "report.json").read_text() == report_json
    assert {p.name: p.read_bytes() for p in (out / "figures").glob("*.png")} == figures


def test_rerun_skips_everything_and_config_change_is_refused(run):
    out, zoo = run
    from evomerge.config import load_config
    from evomerge.pipelines.scale.driver import run_scale
    from evomerge.errors import OutputExistsError

    cfg = load_config(out / "config.yaml")
    res = run_scale(cfg, out, zoo=zoo, progress=False)
    assert res.cells_run == 0 and res.cells_skipped == res.cells_total
    changed = cfg.model_copy(update={"seed": 5})
    with pytest.raises(OutputExistsError, match="different config"):
        run_scale(changed, out, zoo=zoo, progress=False)


def test_scaling_fit_rows_say_what_each_law_reads(run):
    """Every row of report.md's scaling-law table ends with its reading, as the fit's numbers
    in scaling_fits.parquet say: A < 0 rises (more experts hurt), b on either end of its range
    is flagged, R^2 < 0.5 is a poor fit."""
    out, _ = run
    fits = pq.read_table(out / "tables" / "scaling_fits.parquet").to_pandas()
    md = (out / "report.md").read_text()
    section = md.split("## Scaling-law fits", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == len(fits)
    for cells, (_, f) in zip(rows, fits.iterrows()):
        assert cells[0] == f"| {f['method']}" and cells[1] == f["target"]
        want = ["rises" if f["A"] < 0 else "falls"]
        if abs(f["b"] - 0.05) < 1e-6 or abs(f["b"] - 4.0) < 1e-6:
            want.append("b at bound")
        if f["r2"] < 0.5:
            want.append("poor fit")
        assert cells[-1] == ", ".join(want) + " |"
