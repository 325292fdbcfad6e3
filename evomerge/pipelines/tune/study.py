"""Creating, resuming and running an Optuna study that many workers may share.

``tune.n_trials`` is the study's total budget: each worker runs until the study holds that many
finished (complete, pruned or failed) trials, so a resumed study only runs what is left and
two workers split the budget instead of doubling it. Each worker checks the budget after its
own trial, so workers that start their trials while ``n_trials - 1`` are finished all finish
them: the total can exceed ``n_trials`` by up to ``workers - 1`` (docs/tuning.md says why it is
not made exact).

A worker that dies (killed, machine lost) leaves its trial RUNNING. Such trials are marked FAIL
and retried with the same parameters (:data:`RETRY`, at most twice): on RDB storages by Optuna's
heartbeats (a trial whose worker stopped beating for the grace period), and, for SQLite and
journal files, also by :func:`sweep_dead_trials` when a worker opens the study and after each of
its trials (a RUNNING trial whose worker process on this machine is gone, or one that no worker
claimed: a worker killed between creating a trial and recording itself on it). A failed trial
that was retried does not count toward the budget; nor does a trial cut by Ctrl-C or SIGTERM,
which is retried the same way (:func:`retry_interrupted`). A resumed worker's sampler is seeded
from the run seed, the worker index and the number of trials already in the study
(:func:`sampler_seed`), so it continues with new parameters instead of repeating trial 0's.
"""

from __future__ import annotations

from typing import Callable

from evomerge import interrupts
from evomerge.errors import ConfigError

SPACE_ATTR = "evomerge.space"
FINISHED = ("COMPLETE", "PRUNED", "FAIL")
WORKER_ATTR = "worker"  # host:pid of the process running the trial
WORKER_START_ATTR = "worker_start"  # that process's start time (tells a reused pid apart)
MAX_RETRY = 2
INTERRUPTED = "interrupted (Ctrl-C or SIGTERM); retried on resume"  # the ``error`` of a trial an interrupt cut
# a live worker records itself on the trial it created within milliseconds; a RUNNING trial still
# unclaimed after this long was created by a worker that died in between
UNCLAIMED_AFTER_S = 10.0


#: user attributes of a failed trial that describe its failure or its worker, not its parameters:
#: its retry does not inherit them (a retry that completes would otherwise carry the failure's
#: ``error``, and a RUNNING retry the dead worker's name until its own worker records itself)
NOT_RETRIED_ATTRS = ("error", WORKER_ATTR, WORKER_START_ATTR)


def retry_callback():
    """Optuna's callback that re-enqueues a failed trial (same parameters) at most ``MAX_RETRY``
    times; the retry keeps Optuna's link to the failed trial (system attributes ``failed_trial``,
    ``retry_history``) and the failed trial's user attributes except :data:`NOT_RETRIED_ATTRS`."""
    import warnings

    import optuna.storages as st

    cls = getattr(st, "RetryHeartbeatStaleTrialCallback", None) or st.RetryFailedTrialCallback  # renamed in 4.9
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-feature warnings
        optuna_retry = cls(max_retry=MAX_RETRY)

    def retry(study, trial) -> None:
        import copy

        clean = copy.copy(trial)  # a FrozenTrial; Optuna's callback copies its user attributes
        clean.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in NOT_RETRIED_ATTRS}
        optuna_retry(study, clean)

    return retry


def sampler_seed(seed: int, worker: int, n_trials_before: int) -> int:
    """The sampler seed of a worker joining a study that already holds ``n_trials_before`` trials."""
    from evomerge.seeding import derive_seed

    if n_trials_before == 0:  # a new study: the seed it always had
        return int(seed) * 1000 + int(worker)
    # the project's one seeding rule; Optuna's samplers take seeds below 2**32
    return derive_seed("optuna-sampler", seed, worker, n_trials_before) % (2**32)


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


def open_study(storage, name: str, fingerprint: str, *, resume: bool, sampler, pruner, shown_url: str,
               log: Callable[[str], None] | None = None):
    """Create the study, or load it with ``resume``; refuse a mismatched search space; fail and
    retry the trials of dead workers (:func:`sweep_dead_trials`)."""
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
        changed = "; ".join(space_changes(stored, fingerprint)[:6])
        raise ConfigError(
            f"study `{name}` in {shown_url} was created with a different search space or objective"
            f"{f' ({changed}; there -> now)' if changed else ''}; resume it with the space it was created with, "
            "or use another --study-name"
        )
    if exists:
        sweep_dead_trials(study, log)
    return study


def space_changes(stored: str, now: str) -> list[str]:
    """What differs between two space fingerprints (:func:`~evomerge.pipelines.tune.space.space_fingerprint`),
    one entry per key, as the config names it: ``tune.space.`rht.gamma`: low 0.7 -> 0.5``,
    ``tune.space.`rht.alpha`: added``, ``tune.objective: merge -> genome``. Empty when a fingerprint
    cannot be read (one written by something else)."""
    import json

    try:
        a, b = json.loads(stored), json.loads(now)
        dims_a = {d["name"]: d for d in a["dims"]}
        dims_b = {d["name"]: d for d in b["dims"]}
    except (ValueError, TypeError, KeyError):
        return []

    def shown(v) -> str:
        return "none" if v is None else str(list(v) if isinstance(v, tuple) else v)

    out = [] if a.get("objective") == b.get("objective") else [
        f"tune.objective: {a.get('objective')} -> {b.get('objective')}"]
    for name in [*dims_a, *(n for n in dims_b if n not in dims_a)]:
        where = f"tune.space.`{name}`"
        if name not in dims_b:
            out.append(f"{where}: removed")
        elif name not in dims_a:
            out.append(f"{where}: added")
        else:
            keys = [k for k in ("type", "low", "high", "log", "choices") if dims_a[name].get(k) != dims_b[name].get(k)]
            if keys:
                out.append(f"{where}: " + ", ".join(f"{k} {shown(dims_a[name].get(k))} -> {shown(dims_b[name].get(k))}"
                                                     for k in keys))
    return out


def check_study_name(name: str, source: str) -> str:
    """``name`` if it can name a study, else :class:`ConfigError` naming ``source`` (``--study-name`` or
    ``tune.study_name``). A study name is an Optuna key and also the start of each evolutionary trial's
    folder name, ``--out/trials/<study>-<number>``, which is removed when the trial ends: it may not be
    empty, hold ``/``, ``\\``, ``..`` or a NUL, or start with ``.`` (a name that would put that folder
    outside ``trials/``, or hide it). Anything else is allowed."""
    if not name:
        raise ConfigError(f"{source}: the study name is empty; give one")
    found = [what for what, bad in (("`/`", "/" in name), ("`\\`", "\\" in name), ("`..`", ".." in name),
                                    ("a NUL character", "\0" in name)) if bad]
    if found or name.startswith("."):
        what = f"holds {' and '.join(found)}" if found else "starts with `.`"
        raise ConfigError(
            f"{source}: study name {name!r} {what}; a study name also names its trials' folders in --out/trials, "
            "so it may not hold `/`, `\\`, `..` or NUL, nor start with `.`: choose another")
    return name


def n_finished(study) -> int:
    """Finished trials that count toward the budget (a failed trial that was retried does not)."""
    import optuna

    states = tuple(getattr(optuna.trial.TrialState, s) for s in FINISHED)
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return sum(1 for t in trials if t.state in states and not (t.state.name == "FAIL" and t.number in retried))


def _process_start(pid: int) -> str | None:
    """Start time (clock ticks since boot) of process ``pid``; None if there is no such process."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        import os

        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return ""
        return ""  # alive, start time unknown (no /proc)
    return stat.rsplit(")", 1)[1].split()[19]


def _worker_alive(trial) -> bool | None:
    """Whether the process that runs ``trial`` is alive; None when it ran on another machine
    (False for a trial no worker claimed for :data:`UNCLAIMED_AFTER_S`)."""
    import datetime
    import socket

    if WORKER_ATTR not in trial.user_attrs:
        started = trial.datetime_start  # Optuna records it in local time, naive
        age = (datetime.datetime.now() - started).total_seconds() if started is not None else 0.0
        return False if age > UNCLAIMED_AFTER_S else None
    host, _, pid = str(trial.user_attrs.get(WORKER_ATTR, "")).rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    start = _process_start(int(pid))
    if start is None:
        return False
    recorded = trial.user_attrs.get(WORKER_START_ATTR)
    return not (recorded and start and recorded != start)


def sweep_dead_trials(study, log: Callable[[str], None] | None = None) -> list[int]:
    """Mark FAIL (and retry) the RUNNING trials whose worker process on this machine is gone;
    on heartbeat storages, also those whose heartbeat is stale. Returns the trial numbers failed here."""
    import optuna

    failed = []
    storage = study._storage
    callback = retry_callback()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if _worker_alive(t) is not False:
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "error", f"worker {t.user_attrs.get(WORKER_ATTR)} died during the trial")
            if not storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker swept it first
            continue
        callback(study, storage.get_trial(t._trial_id))
        failed.append(t.number)
        if log:
            log(f"trial {t.number}: FAIL (its worker {t.user_attrs.get(WORKER_ATTR)} is gone); retried with the same parameters")
    import warnings

    from optuna.storages import fail_stale_trials

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        fail_stale_trials(study)  # heartbeat storages: stale trials of workers on other machines
    return failed


def run_study(study, objective: Callable, *, n_trials: int, timeout: float | None,
              log: Callable[[str], None] | None = None) -> int:
    """Run trials until the study holds ``n_trials`` finished ones (or ``timeout``); return how many ran here.

    A trial that raises is recorded as FAIL (its error in the ``error`` user attribute) and the
    study goes on.
    """
    remaining = n_trials - n_finished(study)
    if remaining <= 0:
        return 0
    ran = 0
    current: list[int] = []  # the trial this worker runs now

    def counted(trial):
        nonlocal ran
        ran += 1
        return objective(trial)

    ask = study.ask

    def ask_known(*args, **kwargs):
        # an interrupt inside ask() (storage I/O after the trial exists) would leave a RUNNING
        # trial this worker cannot name: it is raised once the trial is known
        with interrupts.held():
            trial = ask(*args, **kwargs)
            current[:] = [trial._trial_id]
        return trial

    def budget(study, trial) -> None:  # the study's budget, shared with the other workers
        sweep_dead_trials(study, log)  # a trial left by a worker that died since this one started
        if n_finished(study) >= n_trials:
            study.stop()

    study.ask = ask_known  # the study's own object, for this loop (the instance attribute goes after)
    try:
        study.optimize(
            counted,
            n_trials=remaining + 2 * MAX_RETRY,  # retried trials run on top; ``budget`` stops the loop
            timeout=timeout,
            catch=(Exception,),
            callbacks=[budget, *([_trial_logger(log)] if log else [])],
            gc_after_trial=True,
            show_progress_bar=False,
        )
    except BaseException as err:  # Ctrl-C or SIGTERM (the CLI's Terminated)
        if not interrupts.caused_by_stop(err):
            raise
        if current:
            retry_interrupted(study, current[0])
        cut = interrupts.as_interrupt(err)
        if cut is err:
            raise
        raise cut from None  # an interrupt inside Optuna's write of a trial's end hides behind its own error
    finally:
        del study.ask
    return ran


def retry_interrupted(study, trial_id: int) -> bool:
    """A trial cut by an interrupt says nothing about its parameters: Optuna has recorded it as
    FAIL (:func:`recording_errors` noted why), or, cut while Optuna wrote that, it is still
    RUNNING and is failed here; enqueue its parameters again, so a resumed study runs it first
    and it does not count toward the budget. True when it was re-enqueued."""
    import optuna

    storage = study._storage
    try:
        trial = storage.get_trial(trial_id)
        if trial.state == optuna.trial.TrialState.RUNNING:  # cut while Optuna recorded its end
            storage.set_trial_user_attr(trial_id, "error", INTERRUPTED)
            storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
        elif trial.state != optuna.trial.TrialState.FAIL:  # it had finished before the interrupt
            return False
        before = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
        retry_callback()(study, storage.get_trial(trial_id))
        return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))) > before
    except Exception:  # the storage is unreachable: the trial stays a plain failure
        return False


def _trial_logger(log: Callable[[str], None]):
    def on_trial(study, trial) -> None:
        value = "" if trial.value is None else f" validation fitness {trial.value:.4f}"
        error = trial.user_attrs.get("error")
        log(f"trial {trial.number}: {trial.state.name}{value}{f' ({error})' if error else ''}")

    return on_trial


def recording_errors(objective: Callable) -> Callable:
    """Wrap ``objective`` so a crash is stored on the trial (user attr ``error``) before Optuna marks it
    failed (an interrupt: :data:`INTERRUPTED`); every trial also records which worker ran it
    (``worker`` = host:pid)."""
    import contextlib
    import os
    import socket

    import optuna

    start = _process_start(os.getpid()) or ""

    def wrapped(trial):
        try:
            trial.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")
            trial.set_user_attr(WORKER_START_ATTR, start)
            return objective(trial)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:  # Ctrl-C / SIGTERM: noted while the trial can still be written
            with contextlib.suppress(Exception):
                trial.set_user_attr("error", INTERRUPTED)
            raise
        except Exception as err:
            trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:2000])
            raise

    return wrapped
