"""Evolutionary trials report per-generation fitness; the median pruner stops a hopeless one early.

Three GENOME trials on the small zoo: two with all six experts, then one with only two experts
(it can serve at most two of the six tasks), which falls below the median at an early
generation and is pruned before its last generation.
"""

from __future__ import annotations

import optuna
import pytest

from evomerge.config import config_from_dict

pytestmark = [pytest.mark.ray, pytest.mark.slow]

GENERATIONS = 4


def test_hopeless_evolutionary_trial_is_pruned_early(tmp_path) -> None:
    from evomerge.pipelines.tune.run import create_or_check_study, run_tune
    from evomerge.zoo import ensure_zoo

    ensure_zoo("small")
    cfg = config_from_dict({
        "seed": 0,
        "evaluation": {"max_samples": 16},
        "genome": {"population": 4, "generations": GENERATIONS, "early_stop_iter": GENERATIONS},
        "ray": {"num_actors": 1, "cpus_per_actor": 1},
        "tune": {"objective": "genome", "pruner": "median", "sampler": "random", "n_trials": 3,
                 "space": {"experts.count": {"type": "int", "low": 2}}},
    })
    url, name = create_or_check_study(cfg, tmp_path / "run", small=True)
    study = optuna.load_study(study_name=name, storage=url)
    for k in (6, 6, 2):
        study.enqueue_trial({"experts.count": k})

    res = run_tune(cfg, tmp_path / "run", resume=True, small=True, log=lambda m: None)
    trials = optuna.load_study(study_name=name, storage=url).trials
    assert [t.params["experts.count"] for t in trials] == [6, 6, 2]
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    full_steps = trials[0].last_step
    assert len(trials[0].intermediate_values) >= GENERATIONS - 1  # one report per round
    assert trials[2].last_step < full_steps, "pruned before its last generation"
    assert trials[2].user_attrs["pruned_at_step"] == trials[2].last_step
    # it was pruned because it was worse than the others at the same step
    s = trials[2].last_step
    assert trials[2].intermediate_values[s] < trials[0].intermediate_values[s]
    assert res.states == {"COMPLETE": 2, "PRUNED": 1}
    assert res.best_value == pytest.approx(trials[0].value)
