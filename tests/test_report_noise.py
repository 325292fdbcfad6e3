"""Evaluation noise in the scale report, on a real tiny scale run of the small zoo (merges with
and without RHT, one search holding both variants in one cell, correlated pairs on no curve; the
run tests/conftest.py shares with test_report_run_files.py and test_scale_rows.py): the noise
table against the fitness table and against a bootstrap recomputed here from the examples files, report.md and
report.json against the table, `evomerge report` regenerating it, and a run directory without
per-example scores."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evomerge.evaluation.bootstrap import resample_counts
from evomerge.pipelines.scale.tables import curve

pytestmark = pytest.mark.ray

B, LEVEL = 2000, 0.95


@pytest.fixture(scope="module")
def run(shared_scale_run):
    """The shared small run (tests/conftest.py, SHARED_SCALE: task arithmetic, TIES and EMR with and
    without RHT, GENOME and Model Swarms, seeds 0 and 1, k up to 4)."""
    return shared_scale_run[0]


def _noise(out) -> pd.DataFrame:
    return pq.read_table(out / "tables" / "noise.parquet").to_pandas()


def test_values_are_the_fitness_tables_means_and_intervals_contain_them(run):
    noise = _noise(run)
    fitness = pq.read_table(run / "tables" / "fitness.parquet").to_pandas()
    n = 0
    for target, name, col in (("all", "all", "fitness"), ("union", "union", "fitness"), ("all/ce", "all", "cross_entropy")):
        for split in ("validation", "test"):
            want = curve(fitness.assign(fitness=fitness[col]), target=name, split=split).set_index(["method", "rht", "k"])
            got = noise[(noise["target"] == target) & (noise["split"] == split)].set_index(["method", "rht", "k"])
            assert sorted(got.index) == sorted(want.index), (target, split)
            assert np.abs(got["value"] - want["mean"].reindex(got.index)).max() < 1e-12
            n += len(got)
    assert n == len(noise) and n > 50
    assert noise["low"].notna().all() and (noise["low"] <= noise["value"]).all() and (noise["value"] <= noise["high"]).all()
    assert (noise["high"] - noise["low"] > 0.01).mean() > 0.9  # real widths, not a degenerate band
    # every search seed holds a plain and an RHT variant under one cell id: both have their points
    assert {True, False} <= set(noise.loc[noise["method"] == "genome", "rht"])


def test_p_best_and_within_noise_on_validation_curves(run):
    noise = _noise(run)
    assert noise.loc[noise["split"] == "test", "p_best"].isna().all()
    assert noise.loc[noise["split"] == "test", "within_noise"].isna().all()
    val = noise[(noise["split"] == "validation") & ~noise["method"].isin(["base", "expert"])]
    for (method, rht, target), g in val.groupby(["method", "rht", "target"]):
        assert g["p_best"].sum() == pytest.approx(1.0), (method, rht, target)
        best = g.loc[g["value"].idxmin() if target == "all/ce" else g["value"].idxmax()]
        assert best["within_noise"], (method, target)


def _examples(out, split):
    ex = pd.concat([pq.read_table(f).to_pandas() for f in sorted((out / "examples").glob("*.parquet"))],
                   ignore_index=True)
    return ex[ex["split"] == split]


def _by_hand(out, split, key, rep_counts):
    """A point's replicate values from the examples files: per cell of the point, each task's
    redrawn mean, the mean over the target's tasks, then over the point's seed rows."""
    method, rht, target, k = key
    scores = pq.read_table(out / "tables" / "scores.parquet").to_pandas()
    s = scores[(scores["method"] == method) & (scores["rht"] == rht) & (scores["k"] == k) & (scores["split"] == split)
               & (scores["kind"] != "pair")]  # the correlated-pair cells are on no curve (tables.curve)
    ex = _examples(out, split)
    col = "cross_entropy" if target == "all/ce" else "score"
    per_row = []  # one entry per (cell, seed) row of the fitness table
    for (cell, seed), rows in s.groupby(["cell", "seed"]):
        tasks = sorted(rows.loc[rows["in_subset"], "task"]) if target == "union" else sorted(rows["task"])
        e = ex[(ex["cell"] == cell) & (ex["rht"] == rht)]
        means = []
        for t in tasks:
            x = e[e["task"] == t].sort_values("row")[col].to_numpy()
            means.append(rep_counts[t] @ x / len(x))
        per_row.append(np.mean(means, axis=0))
    return np.mean(per_row, axis=0)


def test_intervals_and_comparisons_equal_a_bootstrap_recomputed_from_the_examples(run):
    noise = _noise(run).set_index(["method", "rht", "target", "split", "k"])
    report = json.loads((run / "report.json").read_text())
    for split in ("validation", "test"):
        ex = _examples(run, split)
        n_rows = ex.groupby("task")["row"].nunique().to_dict()
        counts = resample_counts(n_rows, replicates=B, seed=0, stream=(split,))
        for key in [("ties", False, "all", 2), ("genome", True, "union", 2), ("task_arithmetic", True, "all/ce", 3)]:
            boot = _by_hand(run, split, key, counts)
            lo, hi = np.quantile(boot, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
            rec = noise.loc[(key[0], key[1], key[2], split, key[3])]
            assert rec["low"] == pytest.approx(lo, abs=1e-12) and rec["high"] == pytest.approx(hi, abs=1e-12), (split, key)
    comps = report["noise_comparisons"]
    assert comps and report["noise_settings"]["reference"] in ("task_arithmetic", "ties")
    ex = _examples(run, "test")
    counts = resample_counts(ex.groupby("task")["row"].nunique().to_dict(), replicates=B, seed=0, stream=("test",))
    for c in comps:
        d = (_by_hand(run, "test", (c["method"], False, "all", c["k"]), counts)
             - _by_hand(run, "test", (c["reference"], False, "all", c["reference_k"]), counts))
        lo, hi = np.quantile(d, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
        assert c["low"] == pytest.approx(lo, abs=1e-12) and c["high"] == pytest.approx(hi, abs=1e-12), c
        assert c["separated"] == (lo > 0 or hi < 0)


def test_report_md_and_json_carry_the_tables_numbers(run):
    noise = _noise(run)
    report = json.loads((run / "report.json").read_text())
    as_json = pd.DataFrame(report["noise"])[noise.columns]
    pd.testing.assert_frame_equal(as_json.astype(noise.dtypes.to_dict()), noise, check_exact=True)
    md = (run / "report.md").read_text()
    assert "## Evaluation noise" in md
    peaks = {p["method"]: p for p in report["peaks_all"] if not p["rht"]}
    rows = {m.group(1): m for m in re.finditer(
        r"^\| (\S+) \| (\d+) \| ([\d.]+) \[([\d.]+), ([\d.]+)\] \| ([\d.]+|n/a) \| ([^|]+) \|", md, re.M)}
    assert set(rows) == set(peaks)
    for method, p in peaks.items():
        m = rows[method]
        rec = noise[(noise["method"] == method) & ~noise["rht"] & (noise["target"] == "all")
                    & (noise["split"] == "validation") & (noise["k"] == p["peak_k"])].iloc[0]
        assert int(m.group(2)) == p["peak_k"]
        assert (m.group(4), m.group(5)) == (f"{rec['low']:.3f}", f"{rec['high']:.3f}")
        assert m.group(6) == f"{rec['p_best']:.2f}"
        near = noise[(noise["method"] == method) & ~noise["rht"] & (noise["target"] == "all")
                     & (noise["split"] == "validation") & (noise["within_noise"] == True)]["k"]  # noqa: E712
        listed = [int(x) for part in m.group(7).split(",") for x in
                  (range(int(part.split("-")[0]), int(part.split("-")[1]) + 1) if "-" in part else [part])]
        assert listed == sorted(near)
    for c in report["noise_comparisons"]:
        line = f"| {c['method']} - {c['reference']} | {c['k']} | {c['difference']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] |"
        assert line in md
        assert ("cannot tell them apart" in md.split(line)[1].splitlines()[0]) == (not c["separated"])


def test_report_command_regenerates_the_noise_table_byte_for_byte(run, tmp_path):
    """`evomerge report` on a copy of the run (the shared run stays as the run wrote it) writes
    the run's noise table again byte for byte, and its report.md but for the run folder its header names."""
    from evomerge.cli import main

    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints", "best_task_vector"))  # (the report reads neither)
    (copy / "tables" / "noise.parquet").unlink()
    (copy / "report.md").unlink()
    assert main(["report", str(copy)]) == 0
    assert (copy / "tables" / "noise.parquet").read_bytes() == (run / "tables" / "noise.parquet").read_bytes()
    md = (run / "report.md").read_text()
    assert str(run) in md
    assert (copy / "report.md").read_text() == md.replace(str(run), str(copy))


def test_report_refuses_a_law_fitted_on_every_k_the_run_measured(run, capsys):
    """`--set scale.law_first_k` of the run's last k (4 here) or beyond would label a fit on the
    whole curve a prediction: refused naming the key, and the report stays as it was."""
    from evomerge.cli import main

    md = (run / "report.md").read_text()
    for m in (4, 99):  # the run's k_max is 4: the config itself refuses it
        assert main(["report", str(run), "--set", f"scale.law_first_k={m}"]) == 2
        err = capsys.readouterr().err
        assert f"error: --set: `scale.law_first_k` ({m}) must be below `scale.k_max` (4)" in err
    assert (run / "report.md").read_text() == md


def test_report_refuses_a_run_configured_to_fit_the_law_on_every_k(run, tmp_path, capsys):
    """A run whose own config.yaml fits the law on every k it measured (`scale` refuses that
    now; a run made before could hold it, on a pool of law_first_k experts): refused naming the
    file and the key, with the `--set` that reports it; nothing is written."""
    import shutil

    import yaml

    from evomerge.cli import main

    copy = tmp_path / "old_run"
    shutil.copytree(run, copy)
    data = yaml.safe_load((copy / "config.yaml").read_text())
    data["scale"]["law_first_k"], data["scale"]["k_max"] = 4, None  # k_end stays the plan's 4
    (copy / "config.yaml").write_text(yaml.safe_dump(data))
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    assert main(["report", str(copy)]) == 2
    err = capsys.readouterr().err
    assert f"{copy / 'config.yaml'}: `scale.law_first_k` = 4" in err and "fewer k than the run measured (4)" in err
    assert "report it with --set scale.law_first_k=3" in err
    assert main(["report", str(copy), "--set", "scale.law_first_k=5"]) == 2  # no k_max: the run's last k decides
    err = capsys.readouterr().err
    assert "--set scale.law_first_k=5: the law must be fitted on fewer k than the run measured (4)" in err
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before


def test_a_run_without_examples_reports_no_intervals_and_everything_else_as_before(run, tmp_path):
    from evomerge.pipelines.scale.report import write_report

    old = tmp_path / "old"
    shutil.copytree(run, old, ignore=shutil.ignore_patterns("examples"))
    write_report(old)
    assert _noise(old).empty and list(_noise(old).columns) == list(_noise(run).columns)
    md = (old / "report.md").read_text()
    assert "Not available: this run directory has no per-example scores" in md
    assert "[95% interval]" not in md
    report = json.loads((old / "report.json").read_text())
    assert report["noise"] == [] and report["noise_comparisons"] == [] and not report["noise_settings"]["available"]
    for name in ("scores", "fitness", "peaks", "rules", "scaling_fits", "theory"):
        a = pq.read_table(run / "tables" / f"{name}.parquet").to_pandas()
        b = pq.read_table(old / "tables" / f"{name}.parquet").to_pandas()
        if name == "rules":  # `se`: the law's noise (pipelines/scale/law_noise.py), read from the examples too
            assert b["se"].isna().all() and a["se"].notna().any()
            a, b = a.drop(columns=["se"]), b.drop(columns=["se"])
        pd.testing.assert_frame_equal(a.drop(columns=["seconds"], errors="ignore"), b.drop(columns=["seconds"], errors="ignore"))


def test_examples_that_do_not_pair_or_belong_to_other_scores_are_refused(run, tmp_path):
    from evomerge.errors import DataError
    from evomerge.io import write_parquet_atomic
    from evomerge.pipelines.scale.report import write_report

    for how, message in (("drop", "other cells have"), ("rows", "rows differ from the other cells' rows"),
                         ("value", "is not the cell's")):
        bad = tmp_path / how
        shutil.copytree(run, bad, ignore=shutil.ignore_patterns("search"))
        f = sorted((bad / "examples").glob("k002-ties*.parquet"))[0]
        t = pq.read_table(f).to_pandas()
        first = t.index[(t["split"] == "validation")][0]
        if how == "drop":
            t = t.drop(index=first)
        elif how == "rows":
            t.loc[first, "row"] = 10_000
        else:
            t.loc[first, "score"] += 0.5
        write_parquet_atomic(f, pa.Table.from_pandas(t, preserve_index=False))
        with pytest.raises(DataError) as e:
            write_report(bad)
        assert f"examples/{f.stem}.parquet" in str(e.value) and message in str(e.value), str(e.value)


def test_without_cross_entropy_the_metric_intervals_stay_and_all_ce_has_none(run):
    from evomerge.pipelines.scale.noise import noise_tables

    scores = pq.read_table(run / "tables" / "scores.parquet").to_pandas()
    ex = pd.concat([pq.read_table(f).to_pandas() for f in sorted((run / "examples").glob("*.parquet"))], ignore_index=True)
    full = noise_tables(scores, ex).table
    bare = noise_tables(scores.assign(cross_entropy=np.nan), ex.assign(cross_entropy=np.nan)).table
    assert set(bare["target"]) == {"all", "union"}
    pd.testing.assert_frame_equal(full[full["target"] != "all/ce"].reset_index(drop=True), bare, check_exact=True)
    pd.testing.assert_frame_equal(full, _noise(run).astype(full.dtypes.to_dict()), check_exact=True)


def test_a_run_resumed_from_one_without_examples_has_intervals_where_all_cells_have_them(run, tmp_path):
    """A run directory made before examples/ existed, then resumed: only the cells run since have
    their examples. Here TIES with RHT at k = 2 loses seed 0's file (seed 1's stays), and task
    arithmetic at k = 3 every file (plain: one cell for both seeds, it is deterministic; RHT: one
    per seed): those points keep their value and have no interval, their curves no p(best), and
    report.md lists them; every other point, TIES plain at k = 2 included, has the interval of
    the complete run."""
    from evomerge.pipelines.scale.report import write_report

    old = tmp_path / "resumed"
    shutil.copytree(run, old, ignore=shutil.ignore_patterns("search"))
    scores = pq.read_table(run / "tables" / "scores.parquet").to_pandas()
    ties2 = sorted(scores.loc[(scores["method"] == "ties") & (scores["k"] == 2) & scores["rht"], "cell"].unique())
    ta3 = sorted(scores.loc[(scores["method"] == "task_arithmetic") & (scores["k"] == 3), "cell"].unique())
    assert len(ties2) == 2 and len(ta3) == 3  # RHT: a cell per seed; plain: one cell for both seeds
    for cell in [ties2[0], *ta3]:
        (old / "examples" / f"{cell}.parquet").unlink()
    write_report(old)

    full = _noise(run).set_index(["method", "rht", "target", "split", "k"]).sort_index()
    part = _noise(old).set_index(["method", "rht", "target", "split", "k"]).sort_index()
    assert part.index.equals(full.index)  # every point has its row, with the fitness table's value
    assert (part["value"] == full["value"]).all()
    method, rht, k = (part.index.get_level_values(n).to_numpy() for n in ("method", "rht", "k"))
    rht = rht.astype(bool)
    lacking = ((method == "ties") & rht & (k == 2)) | ((method == "task_arithmetic") & (k == 3))
    assert lacking.sum() == 3 * 2 + 2 * 3 * 2  # targets x splits (TIES with RHT), x variants (task arithmetic)
    assert part.loc[lacking, ["low", "high", "p_best"]].isna().all().all()
    assert part.loc[lacking, "within_noise"].isna().all()
    # the others: the complete run's intervals (the replicates redraw the same rows; fewer cells in the
    # bootstrap's matrix change only the floating-point order of its sums)
    pd.testing.assert_frame_equal(part.loc[~lacking, ["low", "high"]], full.loc[~lacking, ["low", "high"]],
                                  check_exact=False, rtol=0, atol=1e-12)
    assert part.loc[("ties", False, "all", "validation", 2), "low"] == pytest.approx(
        full.loc[("ties", False, "all", "validation", 2), "low"], abs=1e-12)
    # p(best) only on the curves whose points all have their interval
    on_lacking_curve = ((method == "ties") & rht) | (method == "task_arithmetic")
    assert np.isnan(part["p_best"].to_numpy(float)[on_lacking_curve]).all()
    split = part.index.get_level_values("split").to_numpy()
    other = ~on_lacking_curve & (split == "validation") & ~np.isin(method, ["base", "expert"]) & (k >= 1)
    assert other.sum() > 0 and ((method == "ties") & ~rht & other).any()
    np.testing.assert_allclose(part["p_best"].to_numpy(float)[other], full["p_best"].to_numpy(float)[other], rtol=0, atol=1e-12)
    # the report says which points and why; report.json carries the rows without interval as null
    md = (old / "report.md").read_text()
    assert "18 curve point(s) have no interval: some of their cells have no per-example scores" in md
    assert ("The points (method, targets; splits): task_arithmetic plain and with RHT (all, all/ce, union; test, "
            "validation): k = 3; ties with RHT (all, all/ce, union; test, validation): k = 2.") in md
    report = json.loads((old / "report.json").read_text())
    assert sum(r["low"] is None for r in report["noise"]) == 18
    assert report["noise_settings"]["available"]
    assert "no interval" not in (run / "report.md").read_text()  # the complete run says nothing of the kind
