"""The searches' stop target (``scale.stop_target``): with ``all`` the online rule reads each
search's best on every task of the run, the very rows the report's ``all`` target shows; with
``own`` it reads the search's own objective (``result.json``), as before.

Each check replays the online rule independently (``online_stop`` / ``online_tolerance`` on the
run's own tables) and compares it with the k the searches actually ran."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from evomerge.config import config_from_dict
from evomerge.errors import ConfigError
from evomerge.theory.online_rule import online_stop, online_tolerance

SEEDS = [0, 1]


def _cfg(target: str | None, tol: float = 0.02):
    scale = {"methods": ["task_arithmetic"], "search": ["genome", "swarm"], "seeds": SEEDS, "with_rht": False,
             "k_max": 4, "law_first_k": 3, "pairs": False, "order": "given", "hist_samples": 20, "online_tol": tol}
    if target is not None:
        scale["stop_target"] = target
    return config_from_dict({
        "evaluation": {"max_samples": 8, "batch_size": 64},  # test: all 200 rows a task, 4 forward passes, not 25
        "scale": scale,
        "genome": {"population": 3, "generations": 1, "early_stop_iter": 1},
        "swarm": {"max_iter": 1, "patience": 1},
        "ray": {"num_actors": 2},
    })


def _replay(points: list[tuple[int, int, float]], base: float, tol_frac: float, grid: list[int]) -> list[int]:
    """The k a method runs when the online rule is read after each k of ``grid`` on ``points``."""
    first = [v for k, _, v in points if k == grid[0]]
    tol = online_tolerance(tol_frac, first, base)
    for j, k in enumerate(grid):
        seen = sorted(p for p in points if p[0] <= k)
        if j >= 1 and online_stop([p[0] for p in seen], [-p[2] for p in seen], tol=tol, window=1).fired:
            return grid[:j + 1]
    return grid


def _fitness(out) -> pd.DataFrame:
    return pd.read_parquet(out / "tables" / "fitness.parquet")


def _check_all(out, tol_frac: float) -> dict:
    f = _fitness(out)
    stop = json.loads((out / "search_stop.json").read_text())
    assert stop["stop_target"] == "all" and stop["enforced"]
    # the report's base for the target all: the base cell's validation fitness on all tasks
    b = f[(f["method"] == "base") & (f["target"] == "all") & (f["split"] == "validation")]
    base = float(b["fitness"].mean())
    assert set(stop["methods"]) == {"genome", "swarm"}
    for method, d in stop["methods"].items():
        rows = f[(f["method"] == method) & (f["kind"] == "search") & (f["split"] == "validation")
                 & (f["target"] == "all") & ~f["rht"]].sort_values(["k", "seed"])
        table = [(int(r.k), int(r.seed), float(r.fitness)) for r in rows.itertuples()]
        assert [tuple(p) for p in d["points"]] == table, method  # exactly the report's values, bit for bit
        assert d["base"] == base
        ran = _replay(table, base, tol_frac, [2, 3, 4])
        assert d["ks_run"] == ran == sorted({k for k, _, _ in table}), method
        assert sorted(p.name for p in (out / "search").iterdir() if p.name.endswith(tuple(f"-{method}-s{s}" for s in SEEDS))) \
            == sorted(f"k{k:03d}-{method}-s{s}" for k in ran for s in SEEDS)
        # the own objective differs from the value read (it covers only the k experts' tasks)
        own = [json.loads((out / "search" / f"k{k:03d}-{method}-s{s}" / "result.json").read_text())["best_fitness"]
               for k, s, _ in table]
        assert own != [v for _, _, v in table]
    return stop


@pytest.mark.ray
def test_stop_target_all_cuts_where_the_replayed_rule_fires(small_zoo, tmp_path):
    from evomerge.pipelines.scale.driver import run_scale

    # a huge tolerance makes the rule fire at its first chance (k = 3): the cut really follows the rule
    out = tmp_path / "all_cut"
    run_scale(_cfg("all", tol=50.0), out, zoo=small_zoo, progress=False, analyze=False)
    stop = _check_all(out, 50.0)
    assert all(d["ks_run"] == [2, 3] and d["fired"] for d in stop["methods"].values())
    assert sorted(stop["skipped"]) == sorted(f"k004-{m}-s{s}" for m in ("genome", "swarm") for s in SEEDS)


@pytest.mark.ray
@pytest.mark.slow  # a second tiny run, at the default tolerance
def test_stop_target_all_is_the_default_and_reads_the_reports_all_rows(small_zoo, tmp_path):
    from evomerge.pipelines.scale.driver import run_scale

    cfg = _cfg(None)  # the schema's default is all
    assert cfg.scale.stop_target == "all"
    out = tmp_path / "all"
    run_scale(cfg, out, zoo=small_zoo, progress=False, analyze=False)
    _check_all(out, cfg.scale.online_tol)


@pytest.mark.ray
def test_stop_target_own_reads_the_search_objective(small_zoo, tmp_path):
    from evomerge.pipelines.scale.driver import run_scale

    out = tmp_path / "own"
    run_scale(_cfg("own"), out, zoo=small_zoo, progress=False, analyze=False)
    stop = json.loads((out / "search_stop.json").read_text())
    assert stop["stop_target"] == "own"
    gains = json.loads((out / "expert_gains.json").read_text())
    plan = json.loads((out / "plan.json").read_text())
    first_tasks = plan["expert_tasks"][:2]  # order given: the first k = 2 experts
    base = sum(gains["base"][t] for t in first_tasks) / len(first_tasks)
    for method, d in stop["methods"].items():
        ks = sorted(int(p.name[1:4]) for p in (out / "search").iterdir() if f"-{method}-" in p.name)
        points = [(k, s, json.loads((out / "search" / f"k{k:03d}-{method}-s{s}" / "result.json").read_text())["best_fitness"])
                  for k in sorted(set(ks)) for s in SEEDS]
        assert [tuple(p) for p in d["points"]] == points, method
        assert d["base"] == pytest.approx(base, abs=1e-12)
        assert d["ks_run"] == _replay(points, base, 0.02, [2, 3, 4]) == sorted(set(ks)), method


def test_bad_stop_target_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"scale\.stop_target"):
        config_from_dict({"scale": {"stop_target": "union"}}, "test config")
