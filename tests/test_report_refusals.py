"""`evomerge report` on a run folder it cannot report as asked: a cell file that cannot be read,
no finished cell, or a `--set` key that describes the cells already run. Each is one `error:`
line and exit code 2, before anything is written; a resumed `evomerge scale` computes a cell
whose file cannot be read again.

One small real run (module scope); each test that damages it works on a copy.
"""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
import yaml

from _cli_helpers import one_error
from evomerge.cli import main

pytestmark = pytest.mark.ray

SMALL = {
    "evaluation": {"max_samples": 16, "batch_size": 64},  # test: all 200 rows a task, 4 passes, not 13
    "scale": {"methods": ["task_arithmetic"], "with_rht": False, "seeds": [0], "order": "given", "k_max": 4,
              "law_first_k": 3, "pairs": False, "hist_samples": 50},
    "ray": {"num_actors": 1},
}
CELL = "k002-task_arithmetic-plain-s0"


@pytest.fixture(scope="module")
def run(small_zoo, tmp_path_factory):
    root = tmp_path_factory.mktemp("report_refusals")
    cfg = root / "small.yaml"
    cfg.write_text(yaml.safe_dump(SMALL))
    out = root / "run"
    assert main(["scale", "--small", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture
def copy(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def _garbage(path):
    path.write_text("garbage\n")


def _empty(path):
    path.write_bytes(b"")


def _cut_short(path):
    path.write_bytes(path.read_bytes()[:200])


def _another_tables(path):
    """Valid Parquet, but the cell's samples file copied over its scores (was read, nulls filled in)."""
    path.write_bytes((path.parent.parent / "samples" / path.name).read_bytes())


@pytest.mark.parametrize("folder,damage,problem", [
    ("cells", _garbage, "magic bytes not found"),
    ("examples", _empty, "0 bytes"),
    ("samples", _cut_short, "magic bytes not found"),
    ("cells", _another_tables, "no column kind, experts, task, in_subset, split, score, seconds: not a file of this table"),
])
def test_a_cell_file_that_cannot_be_read_is_refused_by_name(copy, capsys, folder, damage, problem):
    path = copy / folder / f"{CELL}.parquet"
    damage(path)
    report = (copy / "report.md").read_bytes()
    line = one_error(["report", copy], capsys)
    assert line.startswith(f"error: {path}: not a readable cell file (") and problem in line, line
    assert f"`evomerge scale --out {copy} --resume` computes that cell again" in line
    assert (copy / "report.md").read_bytes() == report


def test_a_score_file_of_an_older_run_without_cross_entropy_is_read(copy):
    """The one column older runs' score files lack is filled with nulls; the rest is the file's."""
    from evomerge.pipelines.scale.store import SCORE_SCHEMA, read_cell_file

    path = copy / "cells" / f"{CELL}.parquet"
    full = pq.read_table(path)
    pq.write_table(full.drop_columns(["cross_entropy"]), path)
    got = read_cell_file(path, SCORE_SCHEMA)
    assert got.column("cross_entropy").null_count == got.num_rows
    assert got.drop_columns(["cross_entropy"]).equals(full.drop_columns(["cross_entropy"]))


def test_no_finished_cells_is_refused(copy, capsys):
    for f in (copy / "cells").glob("*.parquet"):
        f.unlink()
    line = one_error(["report", copy], capsys)
    assert line.startswith(f"error: {copy / 'cells'}: no finished cells"), line


def test_a_damaged_file_of_a_cell_outside_the_plan_does_not_matter(copy, capsys):
    (copy / "cells" / "k009-ties-plain-s0.parquet").write_text("an older plan's cell, cut short")
    assert main(["report", str(copy)]) == 0


def test_resume_computes_a_cell_whose_file_cannot_be_read_again(copy, small_zoo, capsys):
    from evomerge.config import load_config
    from evomerge.pipelines.scale.driver import run_scale

    before = pq.read_table(copy / "cells" / f"{CELL}.parquet").to_pandas().drop(columns="seconds")
    other = "k003-task_arithmetic-plain-s0"
    _garbage(copy / "cells" / f"{CELL}.parquet")
    _empty(copy / "examples" / f"{other}.parquet")
    capsys.readouterr()
    res = run_scale(load_config(copy / "config.yaml"), copy, zoo=small_zoo, progress=False)
    err = capsys.readouterr().err
    assert res.cells_run == 2, err
    for path in (copy / "cells" / f"{CELL}.parquet", copy / "examples" / f"{other}.parquet"):
        assert f"scale: {path}: not a readable cell file" in err and "the cell is computed again" in err
    after = pq.read_table(copy / "cells" / f"{CELL}.parquet").to_pandas().drop(columns="seconds")
    assert after.equals(before)
    assert pq.read_table(copy / "examples" / f"{other}.parquet").num_rows > 0
    assert main(["report", str(copy)]) == 0


@pytest.mark.parametrize("key", [
    "scale.methods=[ties]", "scale.seeds=[7]", "scale.with_rht=true", "scale.k_max=9", "scale.k_min=2",
    "scale.order=random", "scale.search=[genome]", "scale.search_k=[2]", "scale.stop=false",
    "scale.stop_target=own", "scale.delta=0.5", "scale.method_params.task_arithmetic.lambda=0.5",
    "scale.pairs=true", "evaluation.metric=exact_match", "seed=3", "scale.no_such_key=1",
])
def test_report_set_refuses_keys_that_describe_the_cells(run, capsys, key):
    report = (run / "report.md").read_bytes()
    line = one_error(["report", run, "--set", key], capsys)
    name = key.partition("=")[0]
    assert line.startswith(f"error: --set {name}: ") and "scale.law_first_k" in line, line
    assert (run / "report.md").read_bytes() == report


def test_each_refused_key_has_its_line(run, capsys):
    capsys.readouterr()
    assert main(["report", str(run), "-s", "scale.seeds=[7]", "-s", "scale.law_noise_z=1", "-s", "scale.order=given"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert [x.split(":")[1].strip() for x in lines] == ["--set scale.seeds", "--set scale.order"], lines


@pytest.mark.parametrize("key", ["scale.law_noise_z=1", "scale.online_tol=0.05", "scale.online_window=2",
                                 "scale.law_first_k=3"])
def test_report_set_judging_keys_still_work(copy, key):
    """The keys of how the cells are judged (docs/scale.md: `evomerge report RUN --set scale.law_noise_z=1`)."""
    before = json.loads((copy / "report.json").read_text())["rules_detail"]
    assert main(["report", str(copy), "--set", key]) == 0
    after = json.loads((copy / "report.json").read_text())["rules_detail"]
    old = {(r["rule"], r["method"], r["target"]): r for r in before}
    if key == "scale.online_tol=0.05":  # the tolerance is online_tol x the first gain (0.02 in the run)
        online = [(r["tol"], old[(r["rule"], r["method"], r["target"])]["tol"]) for r in after if r["rule"] == "online"]
        assert online and all(new == pytest.approx(2.5 * was) for new, was in online)
    if key == "scale.law_noise_z=1":  # the law's tolerance: max(the online one, 1 x its step SE)
        law = [r for r in after if r["rule"].startswith("law")]
        online = {(r["method"], r["target"]): r["tol"] for r in after if r["rule"] == "online"}
        assert law and all(r["tol"] == pytest.approx(max(online[(r["method"], r["target"])], r["se"])) for r in law)


def test_every_scale_key_but_the_report_keys_is_refused():
    from evomerge.config.sections import ScaleConfig
    from evomerge.errors import ConfigError
    from evomerge.pipelines.scale.report import check_report_sets

    assert ScaleConfig.REPORT_KEYS <= set(ScaleConfig.model_fields)
    check_report_sets({f"scale.{k}": None for k in ScaleConfig.REPORT_KEYS})
    for name in set(ScaleConfig.model_fields) - ScaleConfig.REPORT_KEYS:
        with pytest.raises(ConfigError, match=f"--set scale.{name}: describes the cells"):
            check_report_sets({f"scale.{name}": None})


def test_report_help_names_the_report_keys(capsys):
    from evomerge.config.sections import ScaleConfig

    capsys.readouterr()
    main(["report", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for k in ScaleConfig.REPORT_KEYS:
        assert f"scale.{k}" in text
