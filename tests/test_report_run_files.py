"""`evomerge report` on damaged or incomplete copies of one small real scale run (registry merges
with and without RHT, GENOME and Model Swarms, two seeds, the pool analysis; the run tests/conftest.py
shares with test_report_noise.py and test_scale_rows.py):

* every file the report reads besides the cells' (plan.json, expert_gains.json, search_stop.json,
  timing.json, analysis/summary.json, a search's result.json and history.parquet) that cannot be
  read is one `error:` line naming it, exit code 2, nothing written;
* a planned cell without its file, not skipped by the stop rule, is named in the header and
  report.json, and its curve is left out of the peaks, the rule table and the fits; a cell the
  stop rule skipped is not missing;
* without `analysis/` the pca95 rows say the analysis is missing (not "did not fire");
* the search table states `select_margin` and counts the initial individuals it kept, as the
  histories show;
* every k in report.json is an int (or null);
* `--set` overrides are recorded in the header and in report.json.
"""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from _cli_helpers import one_error, run_cli

pytestmark = pytest.mark.ray

SEARCH = "k003-genome-s1"


@pytest.fixture(scope="module")
def run(shared_scale_run):
    """The shared small run (tests/conftest.py, SHARED_SCALE: task arithmetic, TIES and EMR with and
    without RHT, pairs, GENOME and Model Swarms, seeds 0 and 1, k up to 4, the analysis and the report)."""
    return shared_scale_run[0]


@pytest.fixture
def copy(run, tmp_path):
    """The run without the searches' checkpoints and best results (the report reads neither)."""
    dst = tmp_path / "run"
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("checkpoints", "best_task_vector"))
    return dst


def _files(run_dir):
    return {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


def _report(run_dir):
    return json.loads((run_dir / "report.json").read_text())


def _truncated(path):
    path.write_text("{")


def _garbage(path):
    path.write_text("garbage\n")


def _a_list(path):
    path.write_text("[]")


def _no_fitness(path):
    pq.write_table(pq.read_table(path).drop_columns(["fitness"]), path)


@pytest.mark.parametrize("name,damage,problem", [
    ("plan.json", _truncated, "not readable JSON (Expecting property name enclosed in double quotes"),
    ("expert_gains.json", _truncated, "not readable JSON (Expecting property name"),
    ("search_stop.json", _a_list, "not readable JSON (a list, not an object)"),
    ("timing.json", _truncated, "not readable JSON (Expecting"),
    ("analysis/summary.json", _truncated, "not readable JSON (Expecting property name"),
    (f"search/{SEARCH}/result.json", _truncated, "not readable JSON (Expecting property name"),
    (f"search/{SEARCH}/history.parquet", _garbage, "not readable Parquet (Parquet magic bytes not found in footer)"),
    (f"search/{SEARCH}/history.parquet", _no_fitness, "not readable Parquet (no column `fitness`)"),
])
def test_a_run_file_that_cannot_be_read_is_one_line_naming_it(copy, capsys, name, damage, problem):
    path = copy / name
    damage(path)
    before = _files(copy)
    line = one_error(["report", copy], capsys)
    assert line.startswith(f"error: {path}: {problem}"), line
    if name.startswith("search/"):
        assert f"remove `{copy}/search/{SEARCH}` and `{copy}/cells/{SEARCH}.parquet`" in line, line
        assert f"`evomerge scale --out {copy} --resume` runs that search again" in line, line
    assert _files(copy) == before  # nothing written, nothing left behind


def test_intact_run_has_no_cell_missing(run):
    report = _report(run)
    assert report["cells_missing"] == [] and report["curves_left_out"] == []
    assert "Incomplete run" not in (run / "report.md").read_text()


@pytest.mark.parametrize("cell,curves", [
    ("k001-task_arithmetic-rht-s0", ["task_arithmetic+rht"]),
    (SEARCH, ["genome", "genome+rht"]),  # one search cell holds both variants
])
def test_a_missing_cell_is_named_and_its_curve_left_out(run, copy, capsys, cell, curves):
    (copy / "cells" / f"{cell}.parquet").unlink()
    code, _, err = run_cli(["report", copy], capsys)
    assert code == 0
    assert f"report: warning: 1 planned cell(s) of {copy} have no file ({cell})" in err, err
    assert f"`evomerge scale --out {copy} --resume` computes them" in err
    report, full = _report(copy), _report(run)
    assert report["cells_missing"] == [cell]
    assert report["curves_left_out"] == [{"method": m, "missing": [cell]} for m in curves]
    assert report["cells_done"] == full["cells_done"] - 1
    md = (copy / "report.md").read_text()
    assert f"**Incomplete run: 1 planned cell has no file in `cells/`**" in md and f"`{cell}`" in md
    assert f"Left out of the peaks, the rule table and the fits: {', '.join(curves)}" in md
    # the curve is on no row of the peaks, the rule table and the fits; every other row is the full run's
    for key in ("rules_detail", "scaling_fits"):
        kept = [r for r in full[key] if r["method"] not in curves]
        assert report[key] == kept and len(kept) < len(full[key]), key
    for key in ("peaks_all", "peaks_union"):
        assert report[key] == [r for r in full[key] if r["label"] not in curves]
    for c in curves:
        assert not [line for line in md.splitlines() if line.startswith(f"| online | {c} |")]


def test_a_cell_the_stop_rule_skipped_is_not_missing(copy, capsys):
    """The online rule fired on GENOME at k = 3 (made so here): its k = 4 cells were planned and not
    run, which search_stop.json records; the report counts them as skipped, not missing."""
    stop = json.loads((copy / "search_stop.json").read_text())
    skipped = ["k004-genome-s0", "k004-genome-s1"]
    for c in skipped:
        (copy / "cells" / f"{c}.parquet").unlink()
    stop["enforced"] = True
    stop["methods"]["genome"].update(fired=True, k=3, ks_run=[2, 3])
    stop["skipped"] = skipped
    (copy / "search_stop.json").write_text(json.dumps(stop))
    code, _, err = run_cli(["report", copy], capsys)
    assert code == 0 and "warning" not in err, err
    report = _report(copy)
    assert report["cells_missing"] == [] and report["curves_left_out"] == []
    md = (copy / "report.md").read_text()
    assert "(2 search cells skipped by the stop rule)" in md and "Incomplete run" not in md
    assert {r["cut_at"] for r in report["rules_detail"] if r["method"] in ("genome", "genome+rht")} == {3}


@pytest.mark.parametrize("remove,reason", [
    ("analysis", "`analysis/` not found in the run"),
    ("analysis/summary.json", "`analysis/summary.json` not found in the run"),
])
def test_without_the_analysis_the_pca_rows_say_it_is_missing(run, copy, capsys, remove, reason):
    assert _report(run)["analysis_missing"] is None and "analysis missing" not in (run / "report.md").read_text()
    target = copy / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    code, _, _ = run_cli(["report", copy], capsys)
    assert code == 0
    report = _report(copy)
    assert report["analysis_missing"] == reason
    pca = [r for r in report["rules_detail"] if r["rule"] == "pca95"]
    assert pca and all(r["unavailable"] == reason and r["fired_k"] is None for r in pca)
    md = (copy / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| pca95 |")]
    assert rows and all(f"| analysis missing ({reason}) |" in line for line in rows), rows
    assert "did not fire" not in " ".join(rows)
    assert f"**Pool analysis missing** ({reason})" in md
    assert f"`variance_floor`, `merged_weight_hist`): analysis missing ({reason})." in md


def _margin_counts(run_dir):
    """From each search's own files: (searches returning a generation-0 individual, those of them
    with a later individual scored higher on validation, i.e. kept by the margin)."""
    initial, kept = 0, []
    for d in sorted((run_dir / "search").iterdir()):
        res = json.loads((d / "result.json").read_text())
        h = pq.read_table(d / "history.parquet").to_pandas()
        best = h[h["id"] == res["best_id"]].iloc[0]
        if best["generation"] == 0:
            initial += 1
            if h["fitness"].max() > best["fitness"]:
                kept.append(d.name)
    return initial, kept


def test_the_search_table_states_the_margin_and_counts_what_it_kept(copy, capsys):
    """A later individual of one search that returned an initial one is given a validation fitness
    above the returned one's, within the margin (select_margin 0.005): the report counts it kept."""
    report = _report(copy)
    rows = {f"k{r['k']:03d}-{r['method']}-s{r['seed']}": r for r in report["searches"]}
    cell = next(c for c, r in sorted(rows.items()) if r["best_generation"] == 0)
    path = copy / "search" / cell / "history.parquet"
    h = pq.read_table(path).to_pandas()
    later = h.index[h["generation"] > 0][0]
    h.loc[later, "fitness"] = rows[cell]["validation"] + 0.0025
    pq.write_table(pa.Table.from_pandas(h, preserve_index=False), path)

    assert run_cli(["report", copy], capsys)[0] == 0
    initial, kept = _margin_counts(copy)
    assert cell in kept
    report = _report(copy)
    assert sorted(f"k{r['k']:03d}-{r['method']}-s{r['seed']}" for r in report["searches"] if r["kept_by_margin"]) == kept
    assert {r["select_margin"] for r in report["searches"]} == {0.005}
    md = " ".join((copy / "report.md").read_text().split())
    assert ("A search returns its best initial individual (generation 0) unless a later one beats it on validation by "
            "more than `select_margin` (this run: genome 0.005, swarm 0.005;") in md
    assert (f"{initial} of {len(rows)} searches returned an individual of their initial population, {len(kept)} of "
            f"them kept by `select_margin`") in md
    r = next(r for c, r in rows.items() if c == cell)
    assert f"k = {r['k']} {r['method']} seed {r['seed']}: {h.loc[later, 'id']} (gen {int(h.loc[later, 'generation'])})" in md
    assert "is the test score of the individual with the best validation fitness" not in md


def _ks(obj, where=""):
    """Every (path, value) of report.json under a key that holds a k (or a list of k)."""
    means = {"peak_k", "fired_k_mean"}  # means over seeds: floats
    if isinstance(obj, dict):
        for key, v in obj.items():
            if key in means or key == "figures":  # (figures: file names, `fitness_vs_k` among them)
                continue
            if key in ("search_k", "ks_run", "fired_k_seeds") and isinstance(v, list):
                yield from ((f"{where}.{key}[]", x) for x in v)
            elif key in ("k", "cut_at", "keeps_k", "k_first", "k_last", "peak_min", "peak_max", "reference_k",
                       "k_end", "k_max_run", "k_measured_max", "n_max", "top_generation", "best_generation",
                       "pca_components_95") or key.endswith("_k"):
                yield f"{where}.{key}", v
            else:
                yield from _ks(v, f"{where}.{key}")
    elif isinstance(obj, list):
        for v in obj:
            yield from _ks(v, f"{where}[]")


def test_every_k_in_report_json_is_an_int(run):
    report = _report(run)
    found = list(_ks(report))
    assert {".rules[].fired_k", ".rules_detail[].fired_k", ".rules_detail[].keeps_k", ".noise[].k"} <= {p for p, _ in found}
    bad = [(p, v) for p, v in found if v is not None and type(v) is not int]
    assert not bad, bad[:5]
    assert any(r["rule"] == "theorem1" and type(r["fired_k"]) is int for r in report["rules"])
    assert all(type(r["peak_k"]) is float for r in report["rules"] if r["peak_k"] is not None)


def test_report_set_is_recorded_in_the_header_and_report_json(copy, capsys):
    assert run_cli(["report", copy, "--set", "scale.law_noise_z=2"], capsys)[0] == 0
    report = _report(copy)
    assert report["report_overrides"] == {"scale.law_noise_z": 2.0}
    assert report["run_settings"] == {"scale.law_noise_z": 0.0}
    head = (copy / "report.md").read_text().split("## ")[0]
    assert ("**Judged with `evomerge report --set`**, not the run's own settings "
            f"({copy}/config.yaml): scale.law_noise_z = 2.0 (the run's: 0.0).") in head
    # the run's own settings again: nothing recorded
    assert run_cli(["report", copy], capsys)[0] == 0
    assert _report(copy)["report_overrides"] == {}
    assert "Judged with" not in (copy / "report.md").read_text()


def test_the_angle_figures_caption_gives_the_pools_random_level(run):
    """The principal-angle caption gives the level of random subspaces of the pool's shapes (the
    analysis's `principal_angle_random_deg`), not "90 = unrelated" (the default zoo's pairs sit at
    59-67 degrees against a random level of about 74)."""
    random = json.loads((run / "analysis" / "summary.json").read_text())["principal_angle_random_deg"]
    assert 45 < random < 90 and _report(run)["principal_angle_random_deg"] == random
    text = (run / "report.md").read_text()
    assert f"{random:.1f} degrees on this pool" in text and "90 = unrelated" not in text


def test_a_search_cell_is_scored_on_test_once_by_the_run(run):
    """A search cell's test score is the run's own (every row, the cell's file); the search does
    not score its result on test itself as well (that doubled the default run's search phase)."""
    results = sorted((run / "search").glob("*/result.json"))
    assert results and all(json.loads(p.read_text())["best_test_fitness"] is None for p in results)
    rows = _report(run)["searches"]
    assert rows and all(r["test_val_selected"] is not None for r in rows)


@pytest.mark.parametrize("top,kept", [(0.703, True), (0.71, False), (0.70, False)])
def test_kept_by_margin_only_within_the_margin(top, kept):
    """A returned initial individual is 'kept by the margin' only if the later best is above it by
    more than 0 and at most select_margin (above the margin the search should have returned it)."""
    import pandas as pd

    from evomerge.config import config_from_dict
    from evomerge.pipelines.scale.report import margin_kept

    cfg = config_from_dict({"genome": {"select_margin": 0.005}})
    rows = [{"cell": "k002-genome-s0", "k": 2, "method": "genome", "seed": 0, "validation": 0.70, "best_generation": 0}]
    history = pd.DataFrame({"id": ["g0.1", "g2.3"], "generation": [0, 2], "fitness": [0.70, top]})
    margin_kept(rows, {"k002-genome-s0": history}, cfg)
    assert rows[0]["kept_by_margin"] is kept and rows[0]["top_fitness"] == top


def test_without_the_base_cell_every_curve_is_left_out(run):
    """Every rule's tolerance is measured from the base model: a missing base cell leaves out every
    curve the run measured (each merge method and search, plain and RHT, as the scores table has them)."""
    import pandas as pd

    from evomerge.pipelines.scale.plan import load_cells
    from evomerge.pipelines.scale.report import left_out_curves

    plan = json.loads((run / "plan.json").read_text())
    base = [c for c in load_cells(plan) if c.kind == "base"]
    scores = pd.read_parquet(run / "tables" / "scores.parquet")
    measured = {(m, bool(r)) for m, r in scores[scores["kind"].isin(["merge", "search"])][["method", "rht"]]
                .drop_duplicates().itertuples(index=False)}
    out = left_out_curves(base, plan)
    assert set(out) == measured and all(ids == [base[0].id] for ids in out.values())
