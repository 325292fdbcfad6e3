"""What ``evomerge tune`` refuses before any work, and what its outputs say, on real SQLite studies
and real folders (the newcomer audit of ``tune``):

* a study name that would put a trial's folder (removed when the trial ends) outside ``--out``;
* a SQLite storage that cannot be opened, an ``--out`` that cannot be written: one ``error:`` line, exit 2;
* ``--timeout`` checked as ``tune.timeout`` is, and Optuna's timeout as the help describes it;
* search-space dimensions the trials never read (``rht.*`` with RHT off, ``merge.*`` in a GENOME study);
* one ``--out``, one study: another study's folder is refused, stale figures are removed;
* a changed space on ``--resume`` named key by key;
* ``best_config.yaml`` without ``tune:``, and an absolute dashboard command for a relative SQLite URL.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from _cli_helpers import run_cli

from evomerge.config import config_from_dict, load_config
from evomerge.errors import ConfigError

optuna.logging.set_verbosity(optuna.logging.ERROR)

MERGE = {"seed": 0, "merge": {"method": "task_arithmetic", "params": {"lambda": 1.0}},
         "evaluation": {"max_samples": 8, "batch_size": 8},
         "tune": {"space": {"merge.params.lambda": {"low": 0.2, "high": 1.2}}, "sampler": "random", "n_trials": 2}}
GENOME = {"seed": 0, "evaluation": {"max_samples": 8},
          "genome": {"population": 2, "generations": 1, "early_stop_iter": 1},
          "ray": {"num_actors": 1, "cpus_per_actor": 1},
          "tune": {"objective": "genome", "pruner": "none", "sampler": "random", "n_trials": 1,
                   "space": {"genome.cross_rate": {"low": 0.1, "high": 0.9}}}}
linux_proc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux's /proc (never writable)")


@pytest.fixture(autouse=True)
def _no_env_storage(monkeypatch):
    monkeypatch.delenv("EVOMERGE_OPTUNA_STORAGE", raising=False)


def _config(tmp_path, data=MERGE, name="tune.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ------------------------------------------------------------------ 1. a study name outside --out
def test_a_study_name_that_leaves_the_trials_folder_is_refused_before_any_work(tmp_path, capsys) -> None:
    """``OUT/trials/../../victim-00000`` is ``victim-00000`` beside OUT: the trial's folder, which the
    trial removes when it ends. It was removed (with what it held); now nothing runs."""
    victim = tmp_path / "victim-00000"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    out = tmp_path / "OUT"
    code, _, err = run_cli(["tune", "--config", _config(tmp_path, GENOME), "--small", "--out", out,
                            "--study-name", "../../victim", "--n-trials", "1"], capsys)
    assert code == 2, err
    assert _error_line(err).startswith("error: --study-name: study name '../../victim' holds `/` and `..`; "), err
    assert (victim / "precious.txt").read_text() == "keep me"
    assert not out.exists()  # refused before any work
    # from the config, the line names tune.study_name; a merge study is refused the same way
    code, _, err = run_cli(["tune", "--config", _config(tmp_path), "--small", "--out", out,
                            "--set", "tune.study_name=.hidden"], capsys)
    assert code == 2 and _error_line(err).startswith("error: tune.study_name: study name '.hidden' starts with `.`")
    assert not out.exists()


@pytest.mark.parametrize("name, ok", [("../x", False), ("a/b", False), ("a\\b", False), ("x\0y", False),
                                      (".x", False), ("", False), ("..", False),
                                      ("my study v1.2 (ties)", True), ("évo-merge_3", True), ("a..b", False)])
def test_study_names_that_cannot_name_a_folder_are_refused_the_rest_are_free(name, ok, tmp_path) -> None:
    from evomerge.pipelines.tune.evolve_objective import trial_dir
    from evomerge.pipelines.tune.study import check_study_name

    if ok:
        assert check_study_name(name, "--study-name") == name
        assert trial_dir(tmp_path / "trials", name, 3) == tmp_path / "trials" / f"{name}-00003"
        return
    with pytest.raises(ConfigError, match="^--study-name: "):
        check_study_name(name, "--study-name")
    with pytest.raises(ConfigError):  # the trials' folder itself is never built from such a name
        trial_dir(tmp_path / "trials", name, 3)


# ---------------------------------------------------------------- 2. a SQLite file that cannot be opened
@linux_proc
def test_a_sqlite_storage_that_cannot_be_opened_is_one_error_line(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    for url in ("sqlite:////proc/optuna.db", "sqlite:////proc/optuna.db?password=hunter2"):
        code, _, err = run_cli(["tune", "--config", _config(tmp_path), "--small", "--out", out, "--storage", url,
                                "--n-trials", "1"], capsys)
        assert code == 2, err
        line = _error_line(err)  # was: a traceback ending `sqlite3.OperationalError: ...`, exit code 1
        assert line.startswith("error: Optuna storage `sqlite:////proc/optuna.db") and "hunter2" not in line, line
        assert line.endswith("cannot be opened: unable to open database file"), line
        assert not out.exists()
    not_a_db = tmp_path / "notes.db"
    not_a_db.write_text("not a database\n" * 100)
    code, _, err = run_cli(["tune", "--config", _config(tmp_path), "--small", "--out", out, "--storage",
                            f"sqlite:///{not_a_db}"], capsys)
    assert code == 2 and _error_line(err).endswith("cannot be opened: file is not a database"), err


# ------------------------------------------------------------------------- 6. an unwritable --out
@linux_proc
def test_an_unwritable_out_is_refused_up_front(tmp_path, capsys) -> None:
    code, _, err = run_cli(["tune", "--config", _config(tmp_path), "--small", "--out", "/proc/evomerge-t4",
                            "--n-trials", "1"], capsys)
    assert code == 2, err  # was: exit code 1, once the study was to be created
    assert _error_line(err).startswith("error: /proc/evomerge-t4: cannot write here ("), err


# --------------------------------------------------------------------------------- 3. --timeout
@pytest.mark.parametrize("value", ["-5", "0"])
def test_timeout_is_checked_as_tune_timeout_is(value, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code, _, err = run_cli(["tune", "--config", _config(tmp_path), "--small", "--out", out, f"--timeout={value}"],
                           capsys)
    assert code == 2, err  # was: accepted, no trial run, exit 0
    assert _error_line(err) == (f"error: --timeout: `tune.timeout`: Input should be greater than 0. "
                                f"Got {float(value)} instead.")
    assert not out.exists()
    code, _, err = run_cli(["tune", "--config", _config(tmp_path), "--small", "--out", out, "--set",
                            f"tune.timeout={value}"], capsys)
    assert code == 2 and "`tune.timeout`: Input should be greater than 0" in err
    from evomerge.pipelines.tune.run import run_tune

    with pytest.raises(ConfigError, match="`tune.timeout`: Input should be greater than 0"):
        run_tune(config_from_dict(MERGE), out, timeout=float(value), small=True, log=lambda m: None)
    assert not out.exists()


def test_a_timeout_shorter_than_a_trial_runs_one_as_the_help_says(tmp_path, small_zoo, capsys) -> None:
    """Optuna checks its timeout before each trial, from when the trials begin: the first one starts."""
    code, out, err = run_cli(["tune", "--config", _config(tmp_path), "--small", "--out", tmp_path / "run",
                              "--n-trials", "3", "--timeout", "0.001"], capsys)
    assert code == 0, err
    assert "trials: {'COMPLETE': 1}" in out, out
    code, help_text, _ = run_cli(["tune", "--help"], capsys)
    assert "a started trial always finishes" in " ".join(help_text.replace("│", " ").split())


# ---------------------------------------------------------------------- 4. dimensions never read
@pytest.mark.parametrize("extra, space, fragment", [
    ({}, {"rht.gamma": {"low": 0.7, "high": 1.0}}, "RHT is off in every trial (rht.enabled: false)"),
    ({"tune": {"objective": "genome"}},
     {"merge.method": {"type": "categorical", "choices": ["ties", "task_arithmetic"]}},
     "each trial is a genome run, which never reads `merge.*`"),
    ({"tune": {"objective": "swarm"}, "merge": {"method": "ties"}}, {"merge.params.density": {"low": 0.2, "high": 0.9}},
     "each trial is a swarm run, which never reads `merge.*`"),
    ({"tune": {"objective": "genome"}, "rht": {"enabled": True}}, {"rht.gamma": {"low": 0.7, "high": 1.0}},
     "with rht.apply_to: final RHT changes only the genome run's written result"),
    ({}, {"merge.rank": {"type": "int", "low": 2, "high": 8}}, "never reading `merge.rank`"),
    ({}, {"scale.k_min": {"type": "int", "low": 1, "high": 3}}, "no tune trial reads `scale.*`"),
])
def test_a_dimension_no_trial_reads_is_refused_before_any_work(extra, space, fragment, tmp_path, capsys) -> None:
    base = GENOME if extra.get("tune", {}).get("objective") else MERGE
    data = {**base, **{k: v for k, v in extra.items() if k != "tune"}}
    data["tune"] = {**base["tune"], **extra.get("tune", {}), "space": space}
    out = tmp_path / "out"
    path = _config(tmp_path, data)
    code, _, err = run_cli(["tune", "--config", path, "--small", "--out", out], capsys)
    assert code == 2, err
    name = next(iter(space))
    line = _error_line(err)
    assert line.startswith(f"error: {path}: tune.space.`{name}`: has no effect: ") and fragment in line, line
    assert not out.exists()


@pytest.mark.parametrize("extra, space", [
    ({"rht": {"enabled": True}}, {"rht.gamma": {"low": 0.7, "high": 1.0}}),
    ({}, {"rht.enabled": {}, "rht.gamma": {"low": 0.7, "high": 1.0}}),  # RHT on in some trials
    ({"tune": {"objective": "genome"}, "rht": {"enabled": True, "apply_to": "candidate"}},
     {"rht.gamma": {"low": 0.7, "high": 1.0}}),
    ({"tune": {"objective": "genome"}, "rht": {"enabled": True}},
     {"rht.apply_to": {"type": "categorical", "choices": ["candidate", "final"]},
      "rht.gamma": {"low": 0.7, "high": 1.0}}),
    ({"tune": {"objective": "genome"}}, {"experts.count": {"type": "int", "low": 2}}),
])
def test_dimensions_the_trials_read_are_kept(extra, space) -> None:
    from evomerge.pipelines.tune.space import build_space

    cfg = config_from_dict({**extra, "tune": {**extra.get("tune", {}), "space": space}})
    assert [d.name for d in build_space(cfg.tune, cfg, n_experts=4)] == list(space)


# --------------------------------------------------------------------- 5. one --out, one study
def test_a_second_study_in_a_study_folder_is_refused_and_stale_figures_go(tmp_path, small_zoo, capsys) -> None:
    cfg = _config(tmp_path)
    out = tmp_path / "T"
    code, _, err = run_cli(["tune", "--config", cfg, "--small", "--out", out], capsys)
    assert code == 0, err
    assert (out / "param_importances.png").is_file()  # two complete trials
    before = {p: p.read_bytes() for p in out.iterdir() if p.is_file()}

    # another study into the same --out: refused, naming both (was: run, its outputs over the first's)
    code, _, err = run_cli(["tune", "--config", cfg, "--small", "--out", out, "--study-name", "other",
                            "--n-trials", "1"], capsys)
    assert code == 2, err
    assert _error_line(err) == (
        f"error: --out {out}: holds the outputs of study `evomerge` (summary.json, optuna.db), not of study `other`; "
        "a tune --out holds one study: give `other` another --out, or continue `evomerge` with "
        "--study-name evomerge --resume")
    # the same name as a new study in another storage would replace the outputs as well
    code, _, err = run_cli(["tune", "--config", cfg, "--small", "--out", out, "--storage",
                            f"sqlite:///{tmp_path}/elsewhere.db", "--n-trials", "1"], capsys)
    assert code == 2 and "already holds study `evomerge` (summary.json, optuna.db); pass --resume" in err, err
    assert not (tmp_path / "elsewhere.db").exists()
    assert {p: p.read_bytes() for p in out.iterdir() if p.is_file()} == before

    # the jobs' entry point (jobs/tune.py) refuses it too, before the zoo or the storage is touched
    from evomerge.pipelines.tune.run import create_or_check_study

    with pytest.raises(ConfigError, match="holds the outputs of study `evomerge`"):
        create_or_check_study(config_from_dict(MERGE), out, study_name="other", small=True)

    # a figure this run does not draw is removed, not left beside a summary saying it was skipped
    one = tmp_path / "one"
    code, _, err = run_cli(["tune", "--config", cfg, "--small", "--out", one, "--n-trials", "1"], capsys)
    assert code == 0, err
    (one / "param_importances.png").write_bytes((out / "param_importances.png").read_bytes())  # a stale one
    code, _, err = run_cli(["tune", "--config", cfg, "--small", "--out", one, "--n-trials", "1", "--resume"], capsys)
    assert code == 0, err
    summary = json.loads((one / "summary.json").read_text())
    assert summary["files"]["param_importances"].startswith("skipped")
    assert not (one / "param_importances.png").exists()


# ------------------------------------------------------------------- 7. a changed space, named
def test_a_changed_space_on_resume_names_what_changed(tmp_path, small_zoo, capsys) -> None:
    from evomerge.pipelines.tune.run import create_or_check_study

    data = {**MERGE, "rht": {"enabled": True},
            "tune": {**MERGE["tune"], "space": {**MERGE["tune"]["space"], "rht.gamma": {"low": 0.7, "high": 1.0}}}}
    cfg = _config(tmp_path, data)
    out = tmp_path / "run"
    create_or_check_study(config_from_dict(data), out, small=True)  # the study and its space, no trial
    code, _, err = run_cli(["tune", "--config", cfg, "--small", "--out", out, "--resume",
                            "--set", "tune.space.rht.gamma.low=0.5",
                            "--set", "tune.space.rht.alpha={low: 0, high: 0.3}",
                            "--set", "tune.space.merge.params.lambda=null"], capsys)
    assert code == 2
    line = _error_line(err)  # was: three lines, the whole space twice as JSON
    assert line == (
        f"error: study `evomerge` in sqlite:///{out.resolve() / 'optuna.db'} was created with a different search "
        "space or objective (tune.space.`merge.params.lambda`: removed; tune.space.`rht.gamma`: low 0.7 -> 0.5; "
        "tune.space.`rht.alpha`: added; there -> now); resume it with the space it was created with, "
        "or use another --study-name"), line


def test_space_changes_name_the_objective_and_each_key() -> None:
    from evomerge.pipelines.tune.space import Dim, space_fingerprint
    from evomerge.pipelines.tune.study import space_changes

    a = space_fingerprint([Dim("rht.gamma", "float", 0.7, 1.0), Dim("merge.method", "categorical",
                                                                    choices=("ties", "task_arithmetic"))], "merge")
    b = space_fingerprint([Dim("rht.gamma", "float", 0.7, 1.0, log=True),
                           Dim("merge.method", "categorical", choices=("ties",))], "genome")
    assert space_changes(a, b) == ["tune.objective: merge -> genome", "tune.space.`rht.gamma`: log False -> True",
                                   "tune.space.`merge.method`: choices ['ties', 'task_arithmetic'] -> ['ties']"]
    assert space_changes(a, a) == [] and space_changes("space-A", b) == []


# --------------------------------------------------- 8. best_config.yaml, 9. the dashboard command
def test_best_config_has_no_tune_section_and_a_relative_sqlite_url_prints_absolute(
        tmp_path, small_zoo, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["tune", "--config", _config(tmp_path), "--small", "--out", "run",
                              "--storage", "sqlite:///studies.db", "--n-trials", "1"], capsys)
    assert code == 0, err
    expected = f"optuna-dashboard sqlite:///{tmp_path.resolve() / 'studies.db'}"  # was: sqlite:///studies.db
    assert f"view with: {expected}" in out, out
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["dashboard"] == expected

    best = yaml.safe_load((tmp_path / "run" / "best_config.yaml").read_text())
    assert "tune" not in best  # was: a `tune:` section of defaults
    # the zoo's files by reference, not by this machine's path (a job's zoo copy goes with its session)
    assert best["experts"]["base"] == "zoo:small/base"
    assert [e["path"] for e in best["experts"]["experts"]] == [f"zoo:small/experts/{n}" for n in
                                                                [e["name"] for e in best["experts"]["experts"]]]
    loaded = load_config(tmp_path / "run" / "best_config.yaml")  # a valid config, as the docs promise
    assert loaded.merge.method == "task_arithmetic" and len(loaded.experts.experts) > 0
    assert loaded.experts.base == small_zoo.base_dir
    assert [s.path for s in loaded.experts.experts] == [small_zoo.expert_dirs[s.name] for s in loaded.experts.experts]
    assert loaded.tune == config_from_dict({}).tune
