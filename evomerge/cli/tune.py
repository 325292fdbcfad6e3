"""``evomerge tune``: an Optuna study over any stage of the config (``tune.space``)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Optional

import typer

from evomerge.cli._common import set_option, small_option, zoo_option
from evomerge.interrupts import when_interrupted


def tune_config(config: Path, sets: list[str], zoo: Optional[str], small: bool, *, timeout: Optional[float] = None):
    """``(zoo profile, config)`` as ``evomerge tune`` builds them (``--config``, ``--set``,
    ``--zoo``/``--small``, ``--timeout`` as ``tune.timeout``: validated by the same schema, an error
    names the flag); ``jobs/tune.py`` builds its study from the same."""
    from evomerge.cli._common import load_config_with_sets, zoo_choice, zoo_settings

    cfg = load_config_with_sets(config, sets, {"tune.timeout": timeout}, {"tune.timeout": "--timeout"})
    return zoo_settings(zoo_choice(zoo, small), cfg, "default")


def space_error(err: Exception, config: Optional[Path], sets: list[str]) -> Exception:
    """A refused ``tune.space`` dimension (checked once the config has loaded: against the merge
    registry, the schema, the pool's size) with each line prefixed by where that dimension was set:
    the config file or ``--set`` (no flag sets one); any other error as it is."""
    from evomerge.cli._common import blamed

    return blamed(err, config, sets, keys="tune.space.")


@contextlib.contextmanager
def _no_interrupt_traceback() -> Iterator[None]:
    """Optuna logs the trial an interrupt cut as failed, with the KeyboardInterrupt's traceback:
    keep its line, drop the traceback (the command's own line says what happened); SQLAlchemy's
    traceback of the cut read is not logged (:func:`_quiet_storage_log`)."""
    import logging

    def drop(record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            record.exc_info, record.exc_text = None, None
        return True

    logger = logging.getLogger("optuna.study._optimize")
    logger.addFilter(drop)
    try:
        with when_interrupted(_quiet_storage_log):
            yield
    finally:
        logger.removeFilter(drop)


def _quiet_storage_log() -> None:
    """Once interrupted, a storage read cut mid-fetch is expected: SQLAlchemy (Optuna's RDB
    storage) would log a traceback for the cursor it then cannot close, beside the command's one
    line. Its logger's level is set before the interrupt unwinds (the log comes while it does,
    from a pool logger whose name depends on the pool class): the process ends after the command."""
    import logging

    logging.getLogger("sqlalchemy").setLevel(logging.CRITICAL)


def interrupted_message(cfg, storage: Optional[str], study_name: Optional[str], out: Path) -> str:
    """What an interrupted ``evomerge tune`` leaves: the study's finished trials (those that use
    up ``--n-trials``, counted as the resumed run's first line counts them) stay in its
    storage (the trial in flight is recorded as failed and enqueued again: ``run_study``), so
    ``--resume`` continues it; before the study exists there is nothing to resume. A local
    storage file that is not there is not created by the look."""
    import optuna

    from evomerge.cli._common import command_line
    from evomerge.pipelines.tune.storage import local_storage_path, open_storage, resolve_storage_url, shown_url
    from evomerge.pipelines.tune.study import n_finished

    again = "nothing to resume (run it again)"
    if cfg is None:
        return f"interrupted: evomerge tune stopped before it read its config; {again}"
    name = study_name or cfg.tune.study_name
    resume = f"resume with: {command_line(resume=True)}"
    try:
        url = resolve_storage_url(storage, cfg.tune.storage, out)
        path = local_storage_path(url)
        if path is not None and not path.is_file():
            return f"interrupted: evomerge tune stopped before study `{name}` was created; {again}"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        store = open_storage(url)
        if name not in optuna.get_all_study_names(store):
            return f"interrupted: evomerge tune stopped before study `{name}` was created; {again}"
        # finished as the resumed run counts them (:func:`run.progress_line`): complete, pruned, or
        # failed without a retry, the trials that use up --n-trials
        done = n_finished(optuna.load_study(study_name=name, storage=store))
    except Exception:  # noqa: BLE001 - the storage cannot be read now: say what resuming takes
        return f"interrupted: evomerge tune (study `{name}`); {resume}"
    return (f"interrupted: evomerge tune (study `{name}` in {shown_url(url)} keeps its {done} finished trial(s)); "
            f"{resume}")


def register(app: typer.Typer) -> None:
    @app.command("tune")
    def tune(
        config: Path = typer.Option(..., "--config", help="YAML config with a `tune:` section (tune.space)"),
        storage: Optional[str] = typer.Option(
            None, help="Optuna storage URL (sqlite:///x.db, postgresql://..., journal:///x.log); "
            "default: $EVOMERGE_OPTUNA_STORAGE, tune.storage, else sqlite in --out"),
        study_name: Optional[str] = typer.Option(None, "--study-name", help="default: tune.study_name"),
        n_trials: Optional[int] = typer.Option(None, "--n-trials", min=1, help="total finished trials the study should hold"),
        timeout: Optional[float] = typer.Option(
            None, help="seconds (> 0; default: tune.timeout) after which this worker starts no new trial (Optuna's "
            "timeout: counted from when its trials begin, checked before each): a started trial always finishes, "
            "so a timeout shorter than one trial still runs one"),
        resume: bool = typer.Option(False, "--resume", help="continue an existing study (or join it as another worker)"),
        out: Path = typer.Option(Path("runs/tune"), "--out", help="run directory (trials.parquet, figures, best_config.yaml)"),
        small: bool = small_option(),
        zoo: Optional[str] = zoo_option(),
        worker: int = typer.Option(0, "--worker", min=0, help="worker index (varies the sampler seed across workers)"),
        sets: list[str] = set_option(),
    ) -> None:
        """Search merge method/parameters, RHT, GENOME/Swarm rates or the number of experts for the best validation fitness.

        Without experts in the config, the built-in zoo (``--zoo``, default: default) is used."""
        from evomerge.cli._common import interruptible
        from evomerge.errors import ConfigError
        from evomerge.io import removed_if_failed
        from evomerge.pipelines.tune.run import run_tune

        opened: list = []  # the config, once read: the interrupted line looks for its study
        with interruptible(lambda: interrupted_message(opened[0] if opened else None, storage, study_name, out)), \
                _no_interrupt_traceback():
            profile, cfg = tune_config(config, sets, zoo, small, timeout=timeout)
            opened.append(cfg)
            with removed_if_failed(out):
                try:
                    res = run_tune(
                        cfg, out, storage=storage, study_name=study_name, n_trials=n_trials, timeout=None,  # in cfg
                        resume=resume, small=profile == "small", worker=worker, log=lambda m: typer.echo(m, err=False),
                    )
                except ConfigError as err:  # a refused dimension: named with where it was set
                    raise space_error(err, config, sets) from None
        typer.echo(f"best config: {res.files.get('best_config', '(no complete trial)')}")
