"""``evomerge tune``: an Optuna study over any stage of the config (``tune.space``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from evomerge.cli._common import set_option, small_option, zoo_option


def tune_config(config: Path, sets: list[str], zoo: Optional[str], small: bool):
    """``(zoo profile, config)`` as ``evomerge tune`` builds them (``--config``, ``--set``,
    ``--zoo``/``--small``); ``jobs/tune.py`` builds its study from the same."""
    from evomerge.cli._common import load_config_with_sets, zoo_choice, zoo_settings

    return zoo_settings(zoo_choice(zoo, small), load_config_with_sets(config, sets), "default")


def register(app: typer.Typer) -> None:
    @app.command("tune")
    def tune(
        config: Path = typer.Option(..., "--config", help="YAML config with a `tune:` section (tune.space)"),
        storage: Optional[str] = typer.Option(
            None, help="Optuna storage URL (sqlite:///x.db, postgresql://..., journal:///x.log); "
            "default: $EVOMERGE_OPTUNA_STORAGE, tune.storage, else sqlite in --out"),
        study_name: Optional[str] = typer.Option(None, "--study-name", help="default: tune.study_name"),
        n_trials: Optional[int] = typer.Option(None, "--n-trials", min=1, help="total finished trials the study should hold"),
        timeout: Optional[float] = typer.Option(None, help="stop starting trials after this many seconds"),
        resume: bool = typer.Option(False, "--resume", help="continue an existing study (or join it as another worker)"),
        out: Path = typer.Option(Path("runs/tune"), "--out", help="run directory (trials.parquet, figures, best_config.yaml)"),
        small: bool = small_option(),
        zoo: Optional[str] = zoo_option(),
        worker: int = typer.Option(0, "--worker", min=0, help="worker index (varies the sampler seed across workers)"),
        sets: list[str] = set_option(),
    ) -> None:
        """Search merge method/parameters, RHT, GENOME/Swarm rates or the number of experts for the best validation fitness.

        Without experts in the config, the built-in zoo (``--zoo``, default: default) is used."""
        from evomerge.io import removed_if_failed
        from evomerge.pipelines.tune.run import run_tune

        profile, cfg = tune_config(config, sets, zoo, small)
        with removed_if_failed(out):
            res = run_tune(
                cfg, out, storage=storage, study_name=study_name, n_trials=n_trials, timeout=timeout,
                resume=resume, small=profile == "small", worker=worker, log=lambda m: typer.echo(m, err=False),
            )
        typer.echo(f"best config: {res.files.get('best_config', '(no complete trial)')}")
