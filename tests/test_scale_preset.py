"""`evomerge scale --preset paper`: the protocol's settings, contradictions refused naming the key
before any work, and (Ray, slow) the final population's test scores recorded beside the
validation-selected one."""

from __future__ import annotations

import json

import pytest

from evomerge.cli import main
from evomerge.config import config_from_dict
from evomerge.errors import ConfigError
from evomerge.pipelines.scale.defaults import preset_data


def test_paper_preset_is_the_table1_protocol():
    cfg = config_from_dict(preset_data("paper"))
    s = cfg.scale
    assert s.search_k == [2, 4, 6, 8, 10] and s.order == "given" and s.seeds == [0, 1, 2, 3, 4]
    assert set(s.search) == {"genome", "swarm"} and s.population_test and not s.stop
    g = cfg.genome
    assert (g.population, g.generations, g.cross_rate, g.ind_mut_rate, g.gene_mut_rate, g.sigma, g.elite_percent) == (
        10, 10, 0.3, 0.1, 0.1, 0.001, 0.1)
    assert g.init_merge == g.crossover == "dare_ties" and g.density == 0.7
    assert cfg.swarm.preset == "paper"
    assert cfg.evaluation.max_samples == 200


@pytest.mark.parametrize("user,sets,key", [
    ({"scale": {"seeds": [0]}}, {}, "scale.seeds"),
    (None, {"scale.order": "gain"}, "scale.order"),
    ({"scale": {"search_k": [2, 3]}}, {}, "scale.search_k"),
])
def test_preset_refuses_contradicting_keys_naming_them(user, sets, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        preset_data("paper", user, sets)


def test_preset_keeps_compatible_keys():
    data = preset_data("paper", {"scale": {"seeds": [0, 1, 2, 3, 4], "hist_samples": 100}}, {"evaluation.batch_size": 8})
    cfg = config_from_dict(data)
    assert cfg.scale.hist_samples == 100 and cfg.evaluation.batch_size == 8 and cfg.scale.seeds == [0, 1, 2, 3, 4]


def test_cli_refuses_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["scale", "--preset", "paper", "--set", "scale.seeds=[1]", "--out", str(out), "--no-progress"]) != 0
    assert "scale.seeds" in capsys.readouterr().err and not out.exists()
    assert main(["scale", "--preset", "nope", "--out", str(out), "--no-progress"]) != 0
    assert "--preset must be one of" in capsys.readouterr().err and not out.exists()


def test_paper_preset_on_a_pool_of_6_is_refused_naming_search_k(small_zoo, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["scale", "--preset", "paper", "--small", "--out", str(out), "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert "scale.search_k" in err and "[8, 10]" in err and not out.exists()


@pytest.mark.ray
@pytest.mark.slow  # one tiny GENOME search per k on real actors
def test_final_population_test_scores_are_recorded(small_zoo, tmp_path):
    from evomerge.pipelines.scale.driver import run_scale
    from evomerge.evaluation import Evaluator
    from evomerge.pipelines.scale.plan import load_cells
    from evomerge.pipelines.scale.search_cells import final_population

    cfg = config_from_dict({
        "evaluation": {"max_samples": 16, "batch_size": 16},
        "scale": {"methods": ["task_arithmetic"], "search": ["genome"], "search_k": [2, 3, 4], "seeds": [0],
                  "with_rht": False, "k_max": 4, "law_first_k": 3, "population_test": True, "pairs": False,
                  "order": "given", "hist_samples": 50},
        "genome": {"population": 3, "generations": 1, "early_stop_iter": 1},
        "ray": {"num_actors": 1},
    })
    out = tmp_path / "run"
    run_scale(cfg, out, zoo=small_zoo, progress=False, stop=False)
    plan = json.loads((out / "plan.json").read_text())
    cell = next(c for c in load_cells(plan) if c.kind == "search" and c.k == 3)
    d = out / "search" / cell.id
    pop = json.loads((d / "population_test.json").read_text())
    members = final_population(out, cell)
    assert set(pop) == set(members) and len(pop) >= 2
    # one individual scored independently: mean test score over the cell's 3 tasks, every test
    # row (max_samples = 16 cuts only validation)
    tasks = [plan["expert_tasks"][i] for i in cell.experts]
    ev = Evaluator.from_zoo(small_zoo, tasks=tasks, max_samples=None, batch_size=16)
    assert all(len(ev.data[t]["test"]) == 200 for t in tasks)
    ident = sorted(pop)[0]
    res = ev.evaluate(members[ident], split="test")
    assert pop[ident] == pytest.approx(sum(res.per_task.values()) / len(tasks), abs=1e-6)
    result = json.loads((d / "result.json").read_text())
    report = json.loads((out / "report.json").read_text())
    chosen = next(r for r in report["searches"] if r["k"] == 3)["test_val_selected"]
    if result["best_id"] in pop:  # the report's validation-selected test score: the same rows
        assert pop[result["best_id"]] == pytest.approx(chosen, abs=1e-6)
        assert max(pop.values()) >= chosen - 1e-9
    md = (out / "report.md").read_text()
    assert "TEST-SET SELECTION" in md
