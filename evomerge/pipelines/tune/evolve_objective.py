"""Evolutionary trials: one trial = one GENOME / Model Swarms run, pruned per generation.

After every round the run's best validation fitness is reported to Optuna
(``trial.report(best, step)``); when the pruner says the trial is hopeless the callback raises
:class:`optuna.TrialPruned`, which stops the run (its actors are released by the runtime).
A trial's ``test_fitness`` is the run's own final test score: over every test row, as a merge
trial's and ``evomerge evolve``'s (:mod:`evomerge.pipelines.evolve.final`).
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any, Callable

from evomerge.config import EvomergeConfig


def pruning_callback(trial) -> Callable[[Any], None]:
    """``on_generation`` callback for :func:`evomerge.pipelines.evolve.run.run_evolve`."""
    import optuna

    def on_generation(info) -> None:
        trial.report(float(info.best_fitness), int(info.step))
        if trial.should_prune():
            trial.set_user_attr("pruned_at_step", int(info.step))
            raise optuna.TrialPruned(f"pruned after step {info.step} (best fitness {info.best_fitness:.4f})")

    return on_generation


def trial_dir(trials_dir: Path, study_name: str, number: int) -> Path:
    """``trials_dir/<study>-<number>``, the folder a trial's run works in (and that is removed when it
    ends); a study name that would put it anywhere but directly in ``trials_dir`` is refused
    (:func:`~evomerge.pipelines.tune.study.check_study_name`, which ``run_tune`` applies before any work)."""
    from evomerge.errors import ConfigError
    from evomerge.pipelines.tune.study import check_study_name

    check_study_name(study_name, "study name")
    run_dir = Path(trials_dir) / f"{study_name}-{number:05d}"
    if run_dir.parent != Path(trials_dir) or run_dir.resolve().parent != Path(trials_dir).resolve():
        raise ConfigError(f"study name {study_name!r}: trial folder {run_dir} would not lie in {trials_dir}")
    return run_dir


def evolve_objective(base: EvomergeConfig, dims, algo: str, trials_dir: Path, *, small: bool = False,
                     keep_runs: bool = False, runtime=None) -> Callable[[Any], float]:
    """``trial -> best validation fitness`` of an evolutionary run under the sampled overrides.

    Each trial's run writes into ``trials_dir/<study>-<number>`` while it runs; unless
    ``keep_runs``, that folder is removed when the trial ends, and ``trials_dir`` with it once empty.

    ``runtime``: an open Runtime whose actors every trial reuses, unless the trial's sampled
    values change the ``ray`` section (then the trial places its own actors)."""
    from evomerge.pipelines.evolve.run import run_evolve
    from evomerge.pipelines.tune.space import apply_overrides, expert_count, suggest

    def objective(trial) -> float:
        values = suggest(trial, dims)
        cfg = apply_overrides(base, values)
        k = expert_count(values)
        run_dir = trial_dir(trials_dir, trial.study.study_name, trial.number)
        if run_dir.exists():  # a retried trial number (another worker's leftover): start clean
            shutil.rmtree(run_dir)
        try:
            res = run_evolve(
                cfg, algo, run_dir, experts=None if k is None else list(range(k)), progress=False,
                zoo_profile="small" if small else "default", write_adapter=False,
                on_generation=pruning_callback(trial),
                runtime=runtime if cfg.ray == base.ray else None,
            )
        finally:
            if not keep_runs:
                shutil.rmtree(run_dir, ignore_errors=True)
                with contextlib.suppress(OSError):  # not empty: another worker's trial runs in it
                    Path(trials_dir).rmdir()  # no empty trials/ left in --out
        trial.set_user_attr("validation_per_task", res.best_val_per_task)
        trial.set_user_attr("test_fitness", res.best_test_fitness)
        trial.set_user_attr("test_per_task", res.best_test_per_task)
        trial.set_user_attr("rounds", res.rounds)
        return float(res.best_fitness)

    return objective
