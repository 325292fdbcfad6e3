"""``evomerge zoo build|info|check``: the built-in expert zoo."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

zoo_app = typer.Typer(help="Build and inspect the built-in expert zoo (tiny base model + LoRA experts).",
                      no_args_is_help=True)


@zoo_app.command("build")
def build_command(
    out: Optional[Path] = typer.Option(None, "--out", help="zoo folder (default: the user cache, see `zoo info`)"),
    small: bool = typer.Option(False, "--small", help="the small test profile (6 tasks, ~1 minute)"),
    seed: int = typer.Option(0, "--seed", help="seed of data, initialisation and training"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing zoo folder"),
) -> None:
    """Generate the tasks, pre-train the base, train one LoRA expert per task (cached)."""
    from evomerge.zoo import Zoo, build_zoo, default_zoo_root
    from evomerge.errors import ExpertLoadError

    profile = "small" if small else "default"
    root = out if out is not None else default_zoo_root(profile, seed)
    if not overwrite and root.exists():
        try:
            zoo = Zoo.open(root)
        except ExpertLoadError as err:
            raise ExpertLoadError(f"{err} (pass --overwrite to rebuild it)") from None
        if zoo.profile == profile and zoo.seed == seed:
            typer.echo(f"zoo already built: {root} ({zoo.profile}, {len(zoo.tasks)} tasks)")
            return
        raise ExpertLoadError(
            f"{root}: holds the `{zoo.profile}` zoo with seed {zoo.seed}; pass --overwrite to rebuild as `{profile}` seed {seed}"
        )
    zoo = build_zoo(root, profile=profile, seed=seed, overwrite=overwrite, progress=True)
    typer.echo(f"built {zoo.profile} zoo in {zoo.manifest['build_seconds']} s: {zoo.root}")
    _print_info(zoo)


@zoo_app.command("info")
def info_command(
    root: Optional[Path] = typer.Argument(None, help="zoo folder (default: the cached default zoo)"),
    small: bool = typer.Option(False, "--small", help="with no folder given: the cached small zoo"),
) -> None:
    """Print a zoo's tasks, model size, build time and base-vs-expert test scores."""
    from evomerge.zoo import Zoo, default_zoo_root

    zoo = Zoo.open(root if root is not None else default_zoo_root("small" if small else "default"))
    _print_info(zoo)


@zoo_app.command("check")
def check_command(
    root: Optional[Path] = typer.Argument(None, help="zoo folder (default: the cached default zoo)"),
    small: bool = typer.Option(False, "--small", help="with no folder given: the cached small zoo"),
    max_samples: int = typer.Option(100, "--max-samples", help="validation examples per task"),
    metric: str = typer.Option("token_accuracy", "--metric"),
    k_max: Optional[int] = typer.Option(None, "--k-max", help="largest number of merged experts"),
) -> None:
    """Does merging mean something here? Gain kept by registry merges of k = 1..N experts."""
    import torch

    from evomerge.zoo import Zoo, default_zoo_root
    from evomerge.zoo.check import check_zoo, n_unrelated, summarize, unrelated_first

    torch.set_num_threads(min(torch.get_num_threads(), 2))
    zoo = Zoo.open(root if root is not None else default_zoo_root("small" if small else "default"))
    rows = check_zoo(zoo, metric=metric, max_samples=max_samples, k_max=k_max)
    order = unrelated_first(zoo)
    n_free = n_unrelated(zoo, order)
    s = summarize(rows, n_free)
    typer.echo(f"{metric} on validation, {max_samples} samples per task; experts added in order: {', '.join(order)}")
    typer.echo(f"(the first {n_free} are mutually unrelated)")
    typer.echo(f"{'k':>2s} {'method':16s} {'params':14s} {'base':>6s} {'experts':>7s} {'merged':>6s} "
               f"{'kept':>6s} {'all tasks':>9s}")
    for r in rows:
        p = ",".join(f"{k}={v:.3g}" for k, v in r.params.items())
        mark = " *" if s["best"][r.k] is r else ""
        typer.echo(f"{r.k:2d} {r.method:16s} {p:14s} {r.union_base:6.3f} {r.union_experts:7.3f} {r.union_merged:6.3f} "
                   f"{r.retained:6.2f} {r.all_merged:9.3f}{mark}")
    typer.echo("kept = (merged - base) / (experts - base) on the union of the merged experts' tasks; * best per k")
    typer.echo("curve (best all-task score by k): " + ", ".join(f"{k}:{v:.3f}" for k, v in s["curve"].items()))
    typer.echo(f"target 1, best merge of 2-4 unrelated experts keeps >= 50% of the gain: "
               f"{'PASS' if s['retention_2_4_ok'] else 'FAIL'}")
    typer.echo(f"target 2, the curve over k bends within N (peak at k={s['peak_k']}): "
               f"{'PASS' if s['bends'] else 'FAIL'}")


def _print_info(zoo) -> None:
    m = zoo.manifest
    model = m["model"]
    typer.echo(f"zoo: {zoo.root}")
    typer.echo(f"profile {m['profile']}, seed {m['seed']}, format v{m['format_version']}, built in {m.get('build_seconds')} s")
    typer.echo(
        f"base: Llama {model['layers']} layers, width {model['hidden']}, vocab {model['vocab']}, "
        f"{model['params']:,} parameters -> {zoo.base_dir}"
    )
    tr = m["training"]
    typer.echo(f"experts: LoRA r={tr['rank']} alpha={tr['alpha']} on {','.join(tr['target_modules'])}, "
               f"{tr['expert_steps']} steps each (base: {tr['base_steps']} steps)")
    typer.echo("related pairs: " + (", ".join(f"{a}~{b}" for a, b in zoo.related_pairs) or "none"))
    scores = m.get("scores", {}).get("test", {})
    typer.echo(f"{'task':14s} {'domain':9s} {'base tok-acc':>12s} {'expert tok-acc':>14s} {'base EM':>8s} {'expert EM':>9s}")
    for t in m["tasks"]:
        s = scores.get(t["name"])
        if s is None:
            continue
        b, e = s["base"], s["expert"]
        typer.echo(f"{t['name']:14s} {t['domain']:9s} {b['token_accuracy']:12.3f} {e['token_accuracy']:14.3f} "
                   f"{b['exact_match']:8.3f} {e['exact_match']:9.3f}")


def register(app: typer.Typer) -> None:
    app.add_typer(zoo_app, name="zoo")
