"""What ``evomerge tune`` writes, refuses and says, on real SQLite studies and real folders:

* an existing ``--out`` that is not a tune run (another command's) is refused before any work,
  and so is ``--resume`` on a folder that holds no study (a shared ``--storage`` still lets the
  first worker create the study with ``--resume``);
* the interrupted line and the resumed run's first line count the same finished trials;
* a GENOME study leaves no empty ``trials/`` folder and says why it has no default fitness.
"""

from __future__ import annotations

import json

import optuna
import pytest
import yaml

from evomerge.cli import main
from evomerge.config import config_from_dict

optuna.logging.set_verbosity(optuna.logging.ERROR)

MERGE = {"seed": 0, "merge": {"method": "task_arithmetic", "params": {"lambda": 1.0}},
         "evaluation": {"max_samples": 8, "batch_size": 8},
         "tune": {"space": {"merge.params.lambda": {"low": 0.2, "high": 1.2}}, "sampler": "random", "n_trials": 2}}


def _config(tmp_path, data=MERGE):
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ----------------------------------------------------------------------------------- defect: --out
def test_another_commands_run_folder_is_refused_untouched(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("EVOMERGE_OPTUNA_STORAGE", raising=False)
    out = tmp_path / "evolve-run"  # what a finished `evomerge evolve` leaves
    (out / "checkpoints").mkdir(parents=True)
    (out / "best_adapter").mkdir()
    (out / "run.json").write_text(json.dumps({"command": "evolve"}))
    (out / "checkpoints" / "gen_0001.json").write_text("{}")
    before = _listing(out)
    for extra in ([], ["--resume"]):
        rc = main(["tune", "--config", str(_config(tmp_path)), "--small", "--out", str(out), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2
        assert err[-1] == (f"error: --out {out}: exists and is not an evomerge tune run (it holds best_adapter/, "
                           "checkpoints/, run.json); choose a new or empty folder, or a tune run's folder"), err
        assert _listing(out) == before  # no optuna.db, summary.json, trials.parquet, figures mixed in


def test_an_unrelated_summary_json_is_not_a_tune_run(tmp_path) -> None:
    from evomerge.errors import ConfigError
    from evomerge.pipelines.tune.run import check_out_dir

    cfg = config_from_dict(MERGE)
    out = tmp_path / "analysis"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps({"experts": 6}))  # `evomerge analyze` writes one too
    with pytest.raises(ConfigError, match="is not an evomerge tune run .it holds summary.json"):
        check_out_dir(cfg, out, storage=None, study_name=None, resume=False)
    # a tune run's own files (and an empty folder) are tune's: its study continues there (--resume), and a
    # new study with its name is refused as the study's own check refuses it (test_tune_refusals.py)
    (out / "summary.json").write_text(json.dumps({"study_name": "evomerge"}))
    for name in ("optuna.db", "trials.parquet", "best_config.yaml", "optimization_history.png"):
        (out / name).write_bytes(b"")
    check_out_dir(cfg, out, storage=f"sqlite:///{tmp_path}/shared.db", study_name=None, resume=True)
    with pytest.raises(ConfigError, match="already holds study `evomerge` .summary.json.; pass --resume"):
        check_out_dir(cfg, out, storage=None, study_name=None, resume=False)
    (tmp_path / "empty").mkdir()
    check_out_dir(cfg, tmp_path / "empty", storage=None, study_name=None, resume=False)


def test_resume_with_nothing_to_resume_is_refused(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("EVOMERGE_OPTUNA_STORAGE", raising=False)
    cfg = _config(tmp_path)
    new = tmp_path / "new"
    rc = main(["tune", "--config", str(cfg), "--small", "--out", str(new), "--resume"])
    assert rc == 2 and not new.exists()  # no folder, no optuna.db created
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --resume: {new} holds no tune study (no optuna.db); nothing to resume: "
        "drop --resume to start the study, or check --out")

    other = tmp_path / "other"  # a tune run's folder, with another study in it
    other.mkdir()
    optuna.create_study(study_name="s1", storage=f"sqlite:///{other / 'optuna.db'}")
    rc = main(["tune", "--config", str(cfg), "--small", "--out", str(other), "--resume"])
    assert rc == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --resume: {other / 'optuna.db'} holds no study `evomerge` (it holds `s1`); nothing to resume: "
        "drop --resume to start it, or check --out / --study-name")


def test_resume_on_a_named_storage_still_lets_the_first_worker_create_the_study(tmp_path, monkeypatch) -> None:
    """docs/tuning.md: several workers each run ``--storage URL --resume``; the first creates it."""
    from evomerge.pipelines.tune.run import check_out_dir

    monkeypatch.delenv("EVOMERGE_OPTUNA_STORAGE", raising=False)
    cfg = config_from_dict(MERGE)
    check_out_dir(cfg, tmp_path / "w0", storage=f"sqlite:///{tmp_path}/shared.db", study_name=None, resume=True)
    monkeypatch.setenv("EVOMERGE_OPTUNA_STORAGE", f"sqlite:///{tmp_path}/shared.db")
    check_out_dir(cfg, tmp_path / "w1", storage=None, study_name=None, resume=True)
    assert not (tmp_path / "shared.db").exists() and not (tmp_path / "w0").exists()


# ------------------------------------------------------------------------- defect: the two counts
def test_interrupted_and_resumed_lines_count_the_same_finished_trials(tmp_path, small_zoo, monkeypatch) -> None:
    """Two complete trials, one cut by Ctrl-C (FAIL) and its retry (WAITING): both lines say 2."""
    from evomerge.cli import _common
    from evomerge.cli.tune import interrupted_message
    from evomerge.pipelines.tune.run import create_or_check_study, run_tune
    from evomerge.pipelines.tune.study import INTERRUPTED, retry_interrupted

    monkeypatch.delenv("EVOMERGE_OPTUNA_STORAGE", raising=False)
    cfg = config_from_dict(MERGE)
    out = tmp_path / "run"
    url, name = create_or_check_study(cfg, out, small=True)
    study = optuna.load_study(study_name=name, storage=url)
    dist = {"merge.params.lambda": optuna.distributions.FloatDistribution(0.2, 1.2)}
    for x in (0.4, 0.6):
        study.add_trial(optuna.trial.create_trial(params={"merge.params.lambda": x}, distributions=dist, value=x))
    cut = study.ask()
    cut.suggest_float("merge.params.lambda", 0.2, 1.2)
    cut.set_user_attr("error", INTERRUPTED)
    study.tell(cut, state=optuna.trial.TrialState.FAIL)
    assert retry_interrupted(study, cut._trial_id)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "FAIL", "WAITING"]

    monkeypatch.setattr(_common, "ARGV", ["tune", "--out", str(out)])
    line = interrupted_message(cfg, None, None, out)
    assert f"keeps its 2 finished trial(s)); resume with: evomerge tune --out {out} --resume" in line, line
    lines: list[str] = []
    run_tune(cfg, out, resume=True, n_trials=2, small=True, log=lines.append)  # the budget is met: no trial runs
    assert lines[0] == f"study `evomerge` in {url}: 2 finished trial(s) so far, target 2; 1 enqueued trial(s) run first"


# ------------------------------------------------------------------- defects: trials/, default fitness
@pytest.mark.ray
def test_a_genome_study_leaves_no_empty_trials_folder_and_says_why_no_default(tmp_path, small_zoo) -> None:
    from evomerge.pipelines.tune.run import run_tune

    cfg = config_from_dict({
        "seed": 0, "evaluation": {"max_samples": 8},
        "genome": {"population": 2, "generations": 1, "early_stop_iter": 1},
        "ray": {"num_actors": 1, "cpus_per_actor": 1},
        "tune": {"objective": "genome", "pruner": "none", "sampler": "random", "n_trials": 1,
                 "space": {"genome.cross_rate": {"low": 0.1, "high": 0.9}}},
    })
    out = tmp_path / "run"
    lines: list[str] = []
    res = run_tune(cfg, out, small=True, log=lines.append)
    assert res.states == {"COMPLETE": 1}
    assert not (out / "trials").exists()  # each trial's run folder went, and the emptied trials/ with it
    assert {p.name for p in out.iterdir()} <= {"optuna.db", "optuna.db-wal", "optuna.db-shm", "summary.json",
                                              "trials.parquet", "best_config.yaml", "optimization_history.png"}
    summary = json.loads((out / "summary.json").read_text())
    reason = "not measured for tune.objective genome (it would cost one more evolutionary run)"
    assert summary["default_validation_fitness"] is None and summary["default_fitness_note"] == reason
    assert f"(default config: {reason})" in lines[-2] and "none" not in lines[-2], lines
