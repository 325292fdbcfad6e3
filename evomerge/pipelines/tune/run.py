"""``run_tune``: one worker of an Optuna study over an evomerge config (CLI and jobs call this)."""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evomerge.config import EvomergeConfig, config_from_dict, dump_config
from evomerge.io import write_json_atomic
from evomerge.pipelines.tune.files import (
    BEST_CONFIG, OPTUNA_DB, SUMMARY, TRIALS_DIR, TRIALS_TABLE, TUNE_FILES, WORKER_DIR, figure_file,
)

DEFAULT_ATTR = "default_validation_fitness"
DEFAULT_TEST_ATTR = "default_test_fitness"


@dataclass
class TuneResult:
    out_dir: Path
    study_name: str
    storage: str  # password masked
    best_value: float | None
    best_params: dict[str, Any]
    default_fitness: float | None
    states: dict[str, int]
    trials_run_here: int
    seconds: float
    files: dict[str, str] = field(default_factory=dict)


def _pool_spec(cfg: EvomergeConfig, small: bool):
    from evomerge.pipelines.scale.driver import pool_spec

    if cfg.experts.experts:
        return pool_spec(cfg)
    from evomerge.zoo import ensure_zoo

    return pool_spec(cfg, ensure_zoo("small" if small else "default", cfg.zoo_dir, progress=True))


def best_config(base: EvomergeConfig, params: dict[str, Any], spec) -> EvomergeConfig:
    """The best trial as a ready config: overrides applied, ``tune:`` back at its defaults (a config
    always has the section; :func:`finish` leaves it out of the file).

    Whatever the objective, the experts the trials used are written out explicitly (the first
    ``experts.count`` of the pool when that was tuned), with the base, so ``evomerge merge`` and
    ``evomerge evolve`` run it on that pool as is, whichever zoo their own defaults would pick. A
    built-in zoo's tasks are written as ``evaluation.task_files`` (every task of the zoo, each its
    ``tasks/<task>`` folder; ``evaluation.tasks`` still picks among them as in the trials): a run
    over listed experts evaluates the task files, and a genome/swarm trial evaluated the zoo's tasks.
    """
    from evomerge.pipelines.tune.space import apply_overrides, expert_count

    cfg = apply_overrides(base, params)
    k = expert_count(params) or len(spec.paths)
    data = cfg.model_dump(mode="json", exclude_none=True)
    data.pop("tune", None)
    # an expert's task as the user gave it (the run's spec names a task after the expert when none
    # was given; written out, that name would be a task the pool's task files may not have)
    tasks = [s.task for s in base.experts.experts] if base.experts.experts else list(spec.tasks)
    data["experts"]["experts"] = [
        {"path": str(p), "name": n, **({"task": t} if t else {})}
        for p, n, t in list(zip(spec.paths, spec.names, tasks))[:k]
    ]
    if spec.base_dir is not None:
        data["experts"]["base"] = str(spec.base_dir)
    if not base.experts.experts and spec.zoo_root is not None:  # the built-in zoo's tasks, all of them
        from evomerge.zoo.zoo import Zoo

        zoo = Zoo.open(spec.zoo_root)
        data["evaluation"]["task_files"] = {t: str(zoo.root / "tasks" / t) for t in zoo.tasks}
    if data["merge"].get("weights"):
        data["merge"]["weights"] = data["merge"]["weights"][:k]
    from evomerge.merging.registry import get_merge_method

    if data["merge"].get("data") and not get_merge_method(cfg.merge.method).needs:
        data["merge"].pop("data")  # the chosen method reads no task files: `evomerge merge` would refuse them
    return config_from_dict(data, "best config")


@dataclass
class Opened:
    """A study joined and checked, with what its trials need."""

    study: Any
    spec: Any
    dims: list
    url: str
    shown: str


def open_tune_study(cfg: EvomergeConfig, out_dir: Path, *, storage: str | None, study_name: str | None,
                    resume: bool, small: bool, worker: int = 0, log=None) -> Opened:
    """Check the space (against the pool's size too), then make ``out_dir``, reach the storage and
    create/join the study: a refused space leaves no folder and no storage file behind. Nothing
    expensive runs before these checks (except building the built-in zoo, which is needed to know
    the pool size)."""
    import optuna

    from evomerge.pipelines.tune.space import build_space, space_fingerprint
    from evomerge.pipelines.tune.storage import open_storage, resolve_storage_url, shown_url
    from evomerge.pipelines.tune.study import make_pruner, make_sampler, open_study, sampler_seed

    tune = cfg.tune
    name = study_name_of(cfg, study_name)
    build_space(tune, cfg)  # cheap checks first (names, ranges), before the zoo is built
    url = resolve_storage_url(storage, tune.storage, out_dir)
    shown = shown_url(url)
    spec = _pool_spec(cfg, small)
    dims = build_space(tune, cfg, n_experts=len(spec.paths))  # e.g. experts.count's `high` vs the pool
    out_dir.mkdir(parents=True, exist_ok=True)  # (the default storage lies in it)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = open_storage(url)
    max_steps = cfg.genome.generations if tune.objective == "genome" else cfg.swarm.max_iter
    study = open_study(
        store, name, space_fingerprint(dims, tune.objective), resume=resume,
        sampler=make_sampler(tune.sampler, cfg.seed * 1000 + worker), pruner=make_pruner(tune.pruner, max_steps),
        shown_url=shown, log=log,
    )
    # A joining or resumed worker continues the sampler's stream instead of repeating trial 0.
    study.sampler = make_sampler(tune.sampler, sampler_seed(cfg.seed, worker, len(study.trials)))
    return Opened(study, spec, dims, url, shown)


def create_or_check_study(cfg: EvomergeConfig, out_dir: str | Path, *, storage: str | None = None,
                          study_name: str | None = None, resume: bool = False, small: bool = False) -> tuple[str, str]:
    """Create the study (or check the one to resume) before workers start; returns ``(url, name)``.
    ``out_dir`` must be writable and hold no other study's outputs (:func:`check_study_owner`)."""
    out_dir = Path(out_dir)
    name = study_name_of(cfg, study_name)
    check_out_writable(out_dir)
    check_study_owner(out_dir, name, resume)
    o = open_tune_study(cfg, out_dir, storage=storage, study_name=study_name, resume=resume, small=small)
    return o.url, o.study.study_name


def write_outputs(cfg: EvomergeConfig, out_dir: str | Path, *, storage: str, study_name: str,
                  small: bool = False, log=print) -> "TuneResult":
    """Trials table, figures, best config and summary of a study run by other workers."""
    out_dir = Path(out_dir)
    o = open_tune_study(cfg, out_dir, storage=storage, study_name=study_name, resume=True, small=small)
    return finish(o.study, cfg, o.spec, out_dir, o.shown, 0, 0.0, log)


def _is_tune_entry(path: Path) -> bool:
    name = path.name
    if name == SUMMARY:  # other commands write a summary.json too: tune's names its study
        try:
            return "study_name" in json.loads(path.read_text())
        except (OSError, ValueError, TypeError):
            return False
    return name in TUNE_FILES or name.startswith(".") and ".tmp-" in name or WORKER_DIR.fullmatch(name) is not None


def check_out_dir(cfg: EvomergeConfig, out_dir: Path, *, storage: str | None, study_name: str | None,
                  resume: bool) -> None:
    """Refuse, before anything is written or built, an ``--out`` that is not tune's to write:

    * a file, or a non-empty folder holding anything tune does not write (another command's run:
      ``run.json``, ``checkpoints/``, ...); a tune run's folder (only :data:`TUNE_FILES`) is fine;
    * ``--resume`` with the default storage (``optuna.db`` in ``--out``) when that file does not
      hold the study: nothing to resume. With a storage named by ``--storage``,
      ``$EVOMERGE_OPTUNA_STORAGE`` or ``tune.storage`` (shared by several workers), ``--resume``
      still joins the study or, for the first worker, creates it (docs/tuning.md);
    * a folder that cannot be written (:func:`check_out_writable`), a study name that cannot name
      the trials' folders (:func:`study_name_of`), a folder holding another study's outputs, or this
      study's without ``--resume`` (:func:`check_study_owner`).
    """
    import optuna

    from evomerge.errors import ConfigError
    from evomerge.pipelines.tune.storage import ENV_VAR, resolve_storage_url

    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir}: is a file, not a folder; choose another --out")
    if out_dir.is_dir():
        foreign = sorted(p.name + ("/" if p.is_dir() else "") for p in out_dir.iterdir() if not _is_tune_entry(p))
        if foreign:
            shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
            raise ConfigError(f"--out {out_dir}: exists and is not an evomerge tune run (it holds {shown}); "
                              "choose a new or empty folder, or a tune run's folder")
    check_out_writable(out_dir)
    name = study_name_of(cfg, study_name)
    if resume and not (storage or os.environ.get(ENV_VAR) or cfg.tune.storage):  # the default storage, in --out
        url = resolve_storage_url(None, None, out_dir)
        db = out_dir / OPTUNA_DB
        if not db.is_file():
            raise ConfigError(f"--resume: {out_dir} holds no tune study (no {OPTUNA_DB}); nothing to resume: "
                              "drop --resume to start the study, or check --out")
        from evomerge.pipelines.tune.storage import open_storage

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        names = sorted(optuna.get_all_study_names(open_storage(url)))
        if name not in names:
            held = f"it holds {', '.join(f'`{n}`' for n in names)}" if names else "it holds none"
            raise ConfigError(f"--resume: {db} holds no study `{name}` ({held}); nothing to resume: "
                              "drop --resume to start it, or check --out / --study-name")
    check_study_owner(out_dir, name, resume)


def study_name_of(cfg: EvomergeConfig, study_name: str | None) -> str:
    """The run's study name (``--study-name``, else ``tune.study_name``), checked
    (:func:`~evomerge.pipelines.tune.study.check_study_name`)."""
    from evomerge.pipelines.tune.study import check_study_name

    if study_name:
        return check_study_name(study_name, "--study-name")
    return check_study_name(cfg.tune.study_name, "tune.study_name")


def check_out_writable(out_dir: Path) -> None:
    """Refuse (:class:`~evomerge.errors.OutputError`, naming the path) an ``--out`` that cannot be
    written, before any work: tune writes into the folder, so an existing one is probed itself."""
    from evomerge.io import check_writable

    check_writable(out_dir / SUMMARY if out_dir.is_dir() else out_dir)


def held_studies(out_dir: Path) -> dict[str, str]:
    """The studies whose outputs or default storage ``out_dir`` holds: ``{study: where}``, where is
    ``summary.json`` (its outputs) and/or ``optuna.db`` (studies in it; read only, no Optuna schema created)."""
    import contextlib
    import sqlite3

    held: dict[str, list[str]] = {}
    summary = out_dir / SUMMARY
    if summary.is_file() and _is_tune_entry(summary):
        with contextlib.suppress(OSError, ValueError, TypeError):
            held.setdefault(str(json.loads(summary.read_text())["study_name"]), []).append(SUMMARY)
    db = out_dir / OPTUNA_DB
    if db.is_file() and db.stat().st_size:
        try:
            with contextlib.closing(sqlite3.connect(str(db), timeout=60)) as con:  # (read-only would leave -wal/-shm)
                names = [r[0] for r in con.execute("SELECT study_name FROM studies")]
        except sqlite3.Error:  # not an Optuna database (yet): the storage's own checks speak for it
            names = []
        for n in names:
            held.setdefault(str(n), []).append(OPTUNA_DB)
    return {n: ", ".join(w) for n, w in held.items()}


def check_study_owner(out_dir: Path, name: str, resume: bool) -> None:
    """One ``--out``, one study: its summary, figures, trials table and best config describe one study, so
    a folder that holds another study's outputs or default storage (:func:`held_studies`) is refused (a
    second study would replace the first one's outputs and leave its stale ones), and so is starting
    (without ``--resume``) a study in a folder that already holds one of its name."""
    from evomerge.errors import ConfigError

    held = held_studies(out_dir) if out_dir.is_dir() else {}
    others = [n for n in held if n != name]
    if others:
        listed = ", ".join(f"`{n}` ({held[n]})" for n in others)
        raise ConfigError(
            f"--out {out_dir}: holds the outputs of study {listed}, not of study `{name}`; a tune --out holds one "
            f"study: give `{name}` another --out, or continue `{others[0]}` with --study-name {others[0]} --resume")
    if held and not resume:
        raise ConfigError(f"--out {out_dir}: already holds study `{name}` ({held[name]}); pass --resume to continue "
                          "it (or join it as another worker), or choose another --out")


def progress_line(study, shown: str, total: int) -> str:
    """The first line of a run: the study's finished trials (complete, pruned, or failed without
    a retry: those that use up ``--n-trials``, as an interrupted run's line counts them), and the
    retries waiting to run first."""
    import optuna

    from evomerge.pipelines.tune.study import n_finished

    waiting = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
    retry = f"; {waiting} enqueued trial(s) run first" if waiting else ""
    return f"study `{study.study_name}` in {shown}: {n_finished(study)} finished trial(s) so far, target {total}{retry}"


def run_tune(
    cfg: EvomergeConfig,
    out_dir: str | Path,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    resume: bool = False,
    small: bool = False,
    worker: int = 0,
    log=print,
) -> TuneResult:
    """Join (or create) the study and run trials until it holds ``n_trials`` finished ones.

    Everything that can be wrong with the input (space, storage, study name) is checked before
    a trial starts.
    """
    from evomerge.pipelines.tune.objective import MergeScorer, merge_objective
    from evomerge.pipelines.tune.study import recording_errors, run_study

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if timeout is not None:  # checked as `tune.timeout` is (> 0), by the one schema
        from evomerge.config.overrides import override

        cfg = override(cfg, {"tune.timeout": timeout}, "timeout")
    check_out_dir(cfg, out_dir, storage=storage, study_name=study_name, resume=resume)
    total = n_trials or cfg.tune.n_trials
    timeout = cfg.tune.timeout
    o = open_tune_study(cfg, out_dir, storage=storage, study_name=study_name, resume=resume, small=small,
                        worker=worker, log=log)
    study = o.study
    log(progress_line(study, o.shown, total))
    for d in o.dims:
        log(f"  {d.describe()}")

    if cfg.tune.objective == "merge":
        scorer = MergeScorer(cfg, o.spec)
        if DEFAULT_ATTR not in study.user_attrs:
            base_score = scorer.score(cfg)
            study.set_user_attr(DEFAULT_ATTR, base_score.validation)
            study.set_user_attr(DEFAULT_TEST_ATTR, base_score.test)
        objective = merge_objective(cfg, o.dims, scorer)
        ran = run_study(study, recording_errors(objective), n_trials=total, timeout=timeout, log=log)
    else:
        ran = _run_evolutionary(study, cfg, o.dims, out_dir, small, total, timeout, log)
    return finish(study, cfg, o.spec, out_dir, o.shown, ran, time.perf_counter() - t0, log)


def _run_evolutionary(study, cfg: EvomergeConfig, dims, out_dir: Path, small: bool, total: int, timeout, log) -> int:
    """Trials that are whole GENOME/Swarm runs; one Ray connection and one set of population
    actors serve them all."""
    from evomerge.distributed.cluster import ray_session
    from evomerge.distributed.runtime import Runtime
    from evomerge.pipelines.tune.evolve_objective import evolve_objective
    from evomerge.pipelines.tune.study import recording_errors, run_study

    with ray_session(cfg.ray), Runtime(cfg) as rt:
        objective = evolve_objective(cfg, dims, cfg.tune.objective, out_dir / TRIALS_DIR, small=small, runtime=rt)
        return run_study(study, recording_errors(objective), n_trials=total, timeout=timeout, log=log)


def finish(study, cfg: EvomergeConfig, spec, out_dir: Path, shown: str, ran: int, seconds: float, log) -> TuneResult:
    """Write the study's outputs (every worker may do this; each file is replaced atomically)."""
    import optuna

    from evomerge.pipelines.tune.dashboard import dashboard_command, password_hint
    from evomerge.pipelines.tune.results import export_trials, write_figures
    from evomerge.pipelines.tune.space import expert_count

    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    files = {"trials": str(export_trials(study, out_dir / TRIALS_TABLE))}
    figures = write_figures(study, out_dir)
    for name, where in figures.items():
        if where.startswith("skipped"):  # an earlier run's figure would stay beside a summary saying skipped
            (out_dir / figure_file(name)).unlink(missing_ok=True)
    files.update(figures)
    best_value = best_params = best_test = best_experts = None
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if complete:
        best = study.best_trial
        best_value, best_params, best_test = best.value, dict(best.params), best.user_attrs.get("test_fitness")
        best_experts = list(spec.names[: expert_count(best_params) or len(spec.names)])
        # without `tune:` (docs/tuning.md: a config to merge or evolve with, not another study)
        # a built-in zoo's experts as `zoo:<profile>/...`: a job's copy of the zoo lies in Ray's
        # package folder, gone with its session; the reference is found wherever the config is used
        dump_config(best_config(cfg, best_params, spec), out_dir / BEST_CONFIG, exclude={"tune"}, zoo_refs=True)
        files["best_config"] = str(out_dir / BEST_CONFIG)
    else:  # none yet: no best config from an earlier study may stay beside this summary
        (out_dir / BEST_CONFIG).unlink(missing_ok=True)
    default = study.user_attrs.get(DEFAULT_ATTR)
    # genome/swarm studies do not measure the default config: it would be one more whole
    # evolutionary run, as costly as a trial (docs/tuning.md)
    no_default = None if default is not None else (
        f"not measured for tune.objective {cfg.tune.objective} (it would cost one more evolutionary run)"
        if cfg.tune.objective != "merge" else "not measured yet")
    summary = {
        "study_name": study.study_name, "storage": shown, "states": states, "best_value": best_value,
        "best_params": best_params, "best_test_fitness": best_test, "best_experts": best_experts,
        "default_validation_fitness": default, "default_test_fitness": study.user_attrs.get(DEFAULT_TEST_ATTR),
        **({"default_fitness_note": no_default} if no_default else {}),
        "dashboard": dashboard_command(shown), "files": files, "worker_pid": os.getpid(),
    }
    write_json_atomic(out_dir / SUMMARY, summary)
    files["summary"] = str(out_dir / SUMMARY)
    log(f"trials: {states}; best validation fitness {_fmt(best_value)} (default config: {no_default or _fmt(default)})")
    hint = password_hint(shown)
    log(f"results in {out_dir}; view with: {dashboard_command(shown)}" + (f"  ({hint})" if hint else ""))
    return TuneResult(out_dir, study.study_name, shown, best_value, best_params or {}, default, states, ran, seconds, files)


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.4f}"
