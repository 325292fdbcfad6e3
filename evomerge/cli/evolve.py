"""``evomerge evolve``: GENOME or Model Swarms on Ray, with per-round records and resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer


def apply_overrides(cfg: Any, algo: str, *, ray_address: str | None = None, actors: int | None = None,
                    generations: int | None = None, seed: int | None = None) -> Any:
    """The config with command-line overrides, validated like a config file."""
    from evomerge.config import config_from_dict

    data = cfg.model_dump(mode="python", exclude_unset=False)
    if ray_address is not None:
        data["ray"]["address"] = ray_address
    if actors is not None:
        data["ray"]["num_actors"] = actors
    if generations is not None:
        if algo == "genome":
            data["genome"]["generations"] = generations
        else:
            data["swarm"]["max_iter"] = generations
    if seed is not None:
        data["seed"] = seed
    return config_from_dict(data, "command line")


def register(app: typer.Typer) -> None:
    @app.command("evolve")
    def evolve(
        algo: str = typer.Option(..., "--algo", help="search algorithm: genome | swarm"),
        out: Path = typer.Option(..., "--out", help="run directory (history, checkpoints, best adapter)"),
        config: Optional[Path] = typer.Option(None, "--config", help="YAML config (default: built-in small zoo)"),
        resume: bool = typer.Option(False, "--resume", help="continue the interrupted run in --out"),
        ray_address: Optional[str] = typer.Option(None, "--ray-address", help="'auto' to join a running cluster"),
        actors: Optional[int] = typer.Option(None, "--actors", help="number of population actors"),
        generations: Optional[int] = typer.Option(None, "--generations", help="genome.generations / swarm.max_iter"),
        seed: Optional[int] = typer.Option(None, "--seed", help="run seed"),
        zoo: str = typer.Option("small", "--zoo", help="built-in zoo profile when the config names no experts"),
    ) -> None:
        """Evolve a merge of the experts; print best/mean fitness per generation."""
        from evomerge.config import load_config
        from evomerge.evolve import run_evolve
        from evomerge.search import check_search_name

        check_search_name(algo, "--algo")
        cfg = apply_overrides(load_config(config), algo, ray_address=ray_address, actors=actors,
                              generations=generations, seed=seed)
        res = run_evolve(cfg, algo, out, resume=resume, zoo_profile=zoo, progress=True)
        typer.echo(f"best {res.best_id}: validation fitness {res.best_fitness:.4f}")
        if res.expert_fitness:
            name, fit = max(res.expert_fitness.items(), key=lambda kv: kv[1])
            typer.echo(f"best single expert {name}: validation fitness {fit:.4f}")
        if res.best_test_fitness is not None:
            tasks = ", ".join(f"{t} {v:.3f}" for t, v in res.best_test_per_task.items())
            typer.echo(f"test (reported only): fitness {res.best_test_fitness:.4f} ({tasks})")
        if res.ensemble is not None and not res.ensemble.get("available"):
            typer.echo("ensemble: not available (the evaluator has no majority vote)")
        elif res.ensemble is not None:
            for row in res.ensemble.get("by_k", []):
                test = f", test {row['test']['fitness']:.4f}" if row.get("test") else ""
                typer.echo(f"ensemble top-{row['k']} ({res.ensemble.get('metric')} of the majority vote): "
                           f"validation {row['validation']['fitness']:.4f}{test}")
        typer.echo(f"history: {res.history_path}")
        if res.adapter_dir is not None:
            what = "adapter" if (res.adapter_dir / "adapter_config.json").is_file() else "task vector"
            typer.echo(f"best {what}: {res.adapter_dir}")
