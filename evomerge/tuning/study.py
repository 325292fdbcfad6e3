"""Creating, resuming and running an Optuna study that many workers may share.

``tune.n_trials`` is the study's total budget: each worker runs until the study holds that many
finished (complete, pruned or failed) trials, so a resumed study only runs what is left and
two workers split the budget instead of doubling it.
"""

from __future__ import annotations

from typing import Callable

from evomerge.errors import ConfigError

SPACE_ATTR = "evomerge.space"
FINISHED = ("COMPLETE", "PRUNED", "FAIL")


def make_sampler(name: str, seed: int):
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=3, warn_independent_sampling=False)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"tune.sampler: unknown sampler `{name}`; use tpe, cmaes or random")


def make_pruner(name: str, max_steps: int):
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(max_steps, 2))
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"tune.pruner: unknown pruner `{name}`; use median, hyperband or none")


def _existing_names(storage) -> set[str]:
    return {s.study_name for s in storage.get_all_studies()}


def open_study(storage, name: str, fingerprint: str, *, resume: bool, sampler, pruner, shown_url: str):
    """Create the study, or load it with ``resume``; refuse a mismatched search space."""
    import optuna

    exists = name in _existing_names(storage)
    if exists and not resume:
        raise ConfigError(
            f"study `{name}` already exists in {shown_url}; pass --resume to continue it "
            "(or join it as another worker), or choose another --study-name"
        )
    study = optuna.create_study(
        study_name=name, storage=storage, sampler=sampler, pruner=pruner, direction="maximize", load_if_exists=True
    )
    stored = study.user_attrs.get(SPACE_ATTR)
    if stored is None:
        study.set_user_attr(SPACE_ATTR, fingerprint)
    elif stored != fingerprint:
        raise ConfigError(
            f"study `{name}` in {shown_url} was created with a different search space or objective; "
            "use another --study-name, or the same tune.space as before.\n"
            f"  stored: {stored}\n  now:    {fingerprint}"
        )
    return study


def n_finished(study) -> int:
    import optuna

    states = tuple(getattr(optuna.trial.TrialState, s) for s in FINISHED)
    return len(study.get_trials(deepcopy=False, states=states))


def run_study(study, objective: Callable, *, n_trials: int, timeout: float | None,
              log: Callable[[str], None] | None = None) -> int:
    """Run trials until the study holds ``n_trials`` finished ones (or ``timeout``); return how many ran here.

    A trial that raises is recorded as FAIL (its error in the ``error`` user attribute) and the
    study goes on.
    """
    import optuna
    from optuna.study import MaxTrialsCallback

    remaining = n_trials - n_finished(study)
    if remaining <= 0:
        return 0
    ran = 0

    def counted(trial):
        nonlocal ran
        ran += 1
        return objective(trial)

    states = tuple(getattr(optuna.trial.TrialState, s) for s in FINISHED)
    study.optimize(
        counted,
        n_trials=remaining,
        timeout=timeout,
        catch=(Exception,),
        callbacks=[MaxTrialsCallback(n_trials, states=states), *([_trial_logger(log)] if log else [])],
        gc_after_trial=True,
        show_progress_bar=False,
    )
    return ran


def _trial_logger(log: Callable[[str], None]):
    def on_trial(study, trial) -> None:
        value = "" if trial.value is None else f" validation fitness {trial.value:.4f}"
        error = trial.user_attrs.get("error")
        log(f"trial {trial.number}: {trial.state.name}{value}{f' ({error})' if error else ''}")

    return on_trial


def recording_errors(objective: Callable) -> Callable:
    """Wrap ``objective`` so a crash is stored on the trial (user attr ``error``) before Optuna marks it
    failed; every trial also records which worker ran it (``worker`` = host:pid)."""
    import os
    import socket

    import optuna

    def wrapped(trial):
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        try:
            return objective(trial)
        except optuna.TrialPruned:
            raise
        except Exception as err:
            trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:2000])
            raise

    return wrapped
