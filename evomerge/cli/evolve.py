"""``evomerge evolve``: GENOME or Model Swarms on Ray, with per-round records and resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from evomerge.cli._common import set_option, small_option, zoo_option


FLAG_NAMES = {"ray.address": "--ray-address", "ray.num_actors": "--actors", "seed": "--seed",
              "genome.generations": "--generations", "swarm.max_iter": "--generations"}


def flag_values(algo: str, *, ray_address: str | None = None, actors: int | None = None,
                generations: int | None = None, seed: int | None = None) -> dict[str, Any]:
    """The command's flags as dotted config keys (laid over the config and ``--set`` values)."""
    return {"ray.address": ray_address, "ray.num_actors": actors, "seed": seed,
            ("genome.generations" if algo == "genome" else "swarm.max_iter"): generations}


def interrupted_message(out: Path) -> str:
    """An interrupted run keeps its checkpointed rounds (``run.json`` and the checkpoint are
    written atomically; the round in flight runs again on resume)."""
    from evomerge.cli._common import command_line

    if (out / "run.json").is_file():
        return f"interrupted: evomerge evolve (the finished rounds stay in {out}); resume with: {command_line(resume=True)}"
    return "interrupted: evomerge evolve stopped before its run directory was written; nothing to resume (run it again)"


def svd_note(svd: dict[str, Any] | None) -> str:
    """What the truncated SVD of a dense result lost, for the ``best adapter`` line."""
    if svd is None:
        return ""
    ranks = svd["ranks"]
    rank = str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}-{ranks[-1]}"
    return (f" (rank {rank}, SVD of the task vector: relative error {svd['relative_error']:.2g}, "
            f"validation fitness {svd['val_fitness']:.4f})")


def register(app: typer.Typer) -> None:
    @app.command("evolve")
    def evolve(
        algo: str = typer.Option(..., "--algo", help="search algorithm: genome | swarm"),
        out: Path = typer.Option(..., "--out", help="run directory (history, checkpoints, result.json; best_adapter/: "
                                 "the best as a peft LoRA adapter, best_task_vector/: as a dense task vector)"),
        config: Optional[Path] = typer.Option(None, "--config", help="YAML config (default: built-in small zoo)"),
        resume: bool = typer.Option(False, "--resume", help="continue the interrupted run in --out"),
        ray_address: Optional[str] = typer.Option(None, "--ray-address", help="'auto' to join a running cluster"),
        actors: Optional[int] = typer.Option(None, "--actors", help="number of population actors"),
        generations: Optional[int] = typer.Option(None, "--generations", help="genome.generations / swarm.max_iter"),
        seed: Optional[int] = typer.Option(None, "--seed", help="run seed"),
        zoo: Optional[str] = zoo_option(),
        small: bool = small_option(),
        sets: list[str] = set_option(),
    ) -> None:
        """Evolve a merge of the experts; print best/mean fitness per generation.

        Without experts in the config, the built-in zoo (``--zoo``, default small) is used. The best
        individual of LoRA experts is written as a peft adapter (best_adapter/, loads with
        PeftModel.from_pretrained on the base); in delta space (the default) also as the exact dense
        task vector (best_task_vector/), the adapter being its truncated SVD at the sum of the
        experts' ranks. Full fine-tunes give best_task_vector/."""
        from evomerge.cli._common import blamed, interruptible, load_config_with_sets, zoo_choice, zoo_settings
        from evomerge.pipelines.evolve.run import run_evolve
        from evomerge.io import removed_if_failed
        from evomerge.search import check_search_name

        from evomerge.errors import ConfigError

        check_search_name(algo, "--algo")
        flags = flag_values(algo, ray_address=ray_address, actors=actors, generations=generations, seed=seed)
        cfg = load_config_with_sets(config, sets, flags, FLAG_NAMES)
        profile, cfg = zoo_settings(zoo_choice(zoo, small), cfg, "small")
        with interruptible(lambda: interrupted_message(out)), removed_if_failed(out):
            try:
                res = run_evolve(cfg, algo, out, resume=resume, zoo_profile=profile, progress=True)
            except ConfigError as err:  # a check that needs the pool's size, e.g. genome.population
                raise blamed(err, config, sets, flags, FLAG_NAMES) from None
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
            typer.echo(f"best adapter: {res.adapter_dir}{svd_note(res.adapter_svd)}")
        if res.task_vector_dir is not None:
            typer.echo(f"best task vector: {res.task_vector_dir}")


    @app.command("evolve-scaling")
    def evolve_scaling(
        out: Path = typer.Option(..., "--out", help="results folder (scaling.parquet, scaling.png)"),
        config: Optional[Path] = typer.Option(None, "--config", help="YAML config (default: built-in small zoo)"),
        algo: str = typer.Option("genome", "--algo", help="search algorithm: genome | swarm"),
        actors: Optional[str] = typer.Option(None, "--actors",
                                             help="comma-separated actor counts (default: 1, 2, 4, ... up to as many "
                                                  "actors as the cluster holds, ray.cpus_per_actor CPUs or a GPU each)"),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace existing results in --out"),
        zoo: Optional[str] = zoo_option(),
        small: bool = small_option(),
        sets: list[str] = set_option(),
    ) -> None:
        """Run the same evolve run (same seed, same work) with 1, 2, 4, ... population actors (spread
        over the nodes) and write speedup and parallel efficiency (scaling.parquet, scaling.png).

        Every count is checked against the cluster (as ``evolve`` checks ``ray.num_actors``) before
        the first run; a refused or failed measurement leaves no output folder behind."""
        import shutil

        from evomerge.cli._common import load_config_with_sets, zoo_choice, zoo_settings
        from evomerge.errors import ConfigError
        from evomerge.io import check_output_path, removed_if_failed
        from evomerge.pipelines.evolve.scaling import measure_scaling, write_scaling
        from evomerge.search import check_search_name

        check_search_name(algo, "--algo")
        try:
            counts = [int(x) for x in actors.split(",")] if actors else None
        except ValueError:
            raise ConfigError(f"--actors {actors!r}: expected comma-separated integers (e.g. 1,2,4)") from None
        if counts is not None and min(counts) < 1:
            raise ConfigError(f"--actors {actors!r}: every count must be >= 1")
        profile, cfg = zoo_settings(zoo_choice(zoo, small), load_config_with_sets(config, sets), "small")
        for name in ("scaling.parquet", "scaling.png"):
            check_output_path(out / name, overwrite, kind="file")
        with removed_if_failed(out):
            try:  # the runs in flight; their folder goes, whether the measurement ends or fails
                rows = measure_scaling(cfg, counts, algo, profile, out / "runs", log=typer.echo)
            finally:
                shutil.rmtree(out / "runs", ignore_errors=True)
            files = write_scaling(rows, out)
        typer.echo(f"table: {files['table']}\nfigure: {files['figure']}")
