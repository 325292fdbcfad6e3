"""``evomerge zoo build|info|check|verify|path``: the built-in expert zoo."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import typer

from evomerge.cli._common import zoo_option

zoo_app = typer.Typer(help="The built-in expert zoo (tiny base model, LoRA and full fine-tune experts): "
                           "shipped with evomerge; build, verify, check and locate it.",
                      no_args_is_help=True)

_SMALL = typer.Option(False, "--small", help="same as --zoo small")
_ZOO = zoo_option()
_FOLDER_HELP = "zoo folder (same as --zoo FOLDER; default: the zoo in use, see `zoo path`)"


def _root(root: Optional[Path], zoo: Optional[str], small: bool) -> Path:
    """The folder for a positional ``root``, ``--zoo PROFILE|PATH`` or ``--small`` (the default
    profile's zoo in use when none is given); values that name different zoos are refused."""
    from evomerge.cli._common import zoo_choice, zoo_profile
    from evomerge.errors import ConfigError
    from evomerge.zoo import zoo_root_in_use

    choice = zoo_choice(zoo, small)
    named = None if choice is None else (
        zoo_root_in_use(choice) if zoo_profile(choice) is not None else Path(choice).expanduser())
    if root is not None and named is not None and root.expanduser().resolve() != named.resolve():
        given = "--small" if small and zoo is None else f"--zoo {choice}"
        raise ConfigError(f"folder {root} and {given} ({named}) name different zoos; pass one of them")
    if root is not None:
        return root
    return named if named is not None else zoo_root_in_use("default")


@zoo_app.command("build")
def build_command(
    out: Optional[Path] = typer.Option(None, "--out", help="zoo folder (default: the user cache, see `zoo path`)"),
    profile: Optional[str] = typer.Option(None, "--profile", help="default | small | tiny  [default: default]"),
    small: bool = typer.Option(False, "--small", help="same as --profile small"),
    seed: int = typer.Option(0, "--seed", help="seed of data, initialisation and training (>= 0)"),
    shared_init: Optional[bool] = typer.Option(
        None, "--shared-init/--no-shared-init",
        help="start every LoRA expert from one LoRA initialisation (default: the profile's, on for default)"),
    threads: int = typer.Option(1, "--threads", help="torch threads per process"),
    workers: int = typer.Option(1, "--workers", help="train the experts in N processes (same files as 1)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing folder"),
) -> None:
    """Build a zoo from scratch: tasks, base pre-training, LoRA and full fine-tune experts."""
    from evomerge.errors import ConfigError, ExpertLoadError
    from evomerge.zoo import Zoo, build_zoo, default_zoo_root
    from evomerge.zoo.build import resolve_profile
    from evomerge.zoo.zoo import build_out_refusal

    # every refusal of the options comes before any work
    if small and profile not in (None, "small"):
        raise ConfigError(f"--small and --profile {profile} disagree; pass one of them")
    profile = "small" if small else (profile or "default")
    resolve_profile(profile)  # unknown profile: one-line error
    if seed < 0:
        raise ConfigError(f"--seed must be >= 0. Got {seed} instead.")
    if threads < 1 or workers < 1:
        raise ConfigError(f"--threads and --workers must be >= 1. Got {threads} and {workers} instead.")
    root = out if out is not None else default_zoo_root(profile, seed)
    refusal = build_out_refusal(root, profile, seed)
    from evomerge.zoo.zoo import MANIFEST

    if refusal is None and root.is_dir() and any(root.iterdir()) and not (root / MANIFEST).is_file():
        # not a zoo: --overwrite would delete the user's files there (ensure_zoo refuses it too)
        refusal = (f"{root}: is not empty and holds no zoo ({MANIFEST} missing); "
                   "build the zoo into a new or empty folder (another --out)")
    existing, open_error = None, None
    if not overwrite and root.exists() and (not root.is_dir() or any(root.iterdir())):
        try:
            existing = Zoo.open(root)
        except ExpertLoadError as err:
            open_error = err
        if existing is not None and existing.profile == profile and existing.seed == seed:  # nothing to write
            typer.echo(f"zoo already built: {root} ({existing.profile}, {len(existing.tasks)} tasks); "
                       "--overwrite rebuilds it")
            return
    if refusal is not None:
        raise ConfigError(refusal)
    if open_error is not None:
        raise ExpertLoadError(f"{open_error} (pass --overwrite to rebuild it)") from None
    if existing is not None:
        raise ExpertLoadError(
            f"{root}: holds the `{existing.profile}` zoo with seed {existing.seed}; pass --overwrite to rebuild as "
            f"`{profile}` seed {seed}"
        )
    from evomerge.cli import _common

    try:
        zoo = build_zoo(root, profile=profile, seed=seed, overwrite=overwrite, progress=True, threads=threads,
                        shared_init=shared_init, workers=workers)
    finally:  # however it ended, its training processes are reaped and its folder is written or
        # removed: the program may skip the interpreter's teardown (1.5 s of torch, transformers, peft)
        _common.FAST_EXIT = True
    typer.echo(f"built {zoo.profile} zoo in {zoo.manifest['build_seconds']} s "
               f"({zoo.manifest['build_cpu_seconds']} s CPU): {zoo.root}")
    _print_info(zoo)


@zoo_app.command("path")
def path_command(zoo: Optional[str] = _ZOO, small: bool = _SMALL) -> None:
    """Print the folder of the zoo in use (the shipped one; the cache if none is shipped)."""
    typer.echo(str(_root(None, zoo, small)))


@zoo_app.command("verify")
def verify_command(
    root: Optional[Path] = typer.Argument(None, help=_FOLDER_HELP),
    zoo: Optional[str] = _ZOO,
    small: bool = _SMALL,
) -> None:
    """Check every file of a zoo against the sha256 in its manifest; exit 1 on any difference."""
    from evomerge.zoo import Zoo

    zoo = Zoo.open(_root(root, zoo, small))
    bad = zoo.verify()
    for line in bad:
        typer.echo(line, err=True)
    if bad:
        typer.echo(f"FAIL: {len(bad)} problem(s) in {zoo.root}; rebuild it with `evomerge zoo build --out {zoo.root} "
                   "--overwrite`", err=True)
        raise typer.Exit(1)
    typer.echo(f"OK: {len(zoo.manifest['files'])} files match the manifest of {zoo.root}")


@zoo_app.command("info")
def info_command(
    root: Optional[Path] = typer.Argument(None, help=_FOLDER_HELP),
    zoo: Optional[str] = _ZOO,
    small: bool = _SMALL,
) -> None:
    """Print a zoo's tasks, model size, build time and base-vs-expert test scores."""
    from evomerge.zoo import Zoo

    _print_info(Zoo.open(_root(root, zoo, small)))


@zoo_app.command("check")
def check_command(
    root: Optional[Path] = typer.Argument(None, help=_FOLDER_HELP),
    zoo: Optional[str] = _ZOO,
    small: bool = _SMALL,
    max_samples: int = typer.Option(200, "--max-samples", help="validation examples per task"),
    k_max: Optional[int] = typer.Option(None, "--k-max", help="largest number of merged experts (default: all)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars (also the libraries' own)"),
) -> None:
    """Measure the zoo's targets (weak base, strong experts, a task-arithmetic curve that rises,
    saturates and, at lambda=1, falls; "ab" fidelity); print PASS/FAIL each, exit 1 on a FAIL."""
    import torch

    from evomerge.zoo import Zoo
    from evomerge.zoo.check import LAMBDAS, check_zoo

    from evomerge.cli._common import library_bars_off

    torch.set_num_threads(min(torch.get_num_threads(), 2))
    zoo = Zoo.open(_root(root, zoo, small), verify=True)
    with library_bars_off() if quiet else contextlib.nullcontext():
        targets, curves, base, own = check_zoo(zoo, max_samples=max_samples, k_max=k_max, progress=not quiet)
    typer.echo(f"zoo {zoo.root} ({zoo.profile}): token accuracy on validation, {max_samples} samples per task")
    typer.echo(f"{'task':14s} {'base':>6s} {'expert':>6s} {'gain':>6s}")
    for t in curves.order:
        typer.echo(f"{t:14s} {base[t]:6.3f} {own[t]:6.3f} {own[t] - base[t]:+6.3f}")
    typer.echo("task arithmetic of the first k experts (order above), all-task gain over the base "
               f"({curves.base:.3f}):")
    typer.echo(f"{'k':>2s} " + " ".join(f"{'l=' + format(lam, 'g'):>7s}" for lam in LAMBDAS) + f" {'tuned':>7s}")
    tuned = curves.tuned()
    for k, row in curves.scores.items():
        typer.echo(f"{k:2d} " + " ".join(f"{row[lam] - curves.base:+7.3f}" for lam in LAMBDAS) + f" {tuned[k]:+7.3f}")
    typer.echo("targets:")
    for tg in targets:
        note = f"  ({tg.note})" if tg.note else ""
        typer.echo(f"  {tg.name:50s} {tg.value:8.3f}  {tg.goal:8s} {'PASS' if tg.passed else 'FAIL'}{note}")
    failed = [tg for tg in targets if not tg.passed]
    typer.echo(f"{len(targets) - len(failed)}/{len(targets)} targets pass" + (f"; FAIL: {len(failed)}" if failed else ""))
    if failed:
        raise typer.Exit(1)


def _a_init_note(tr: dict) -> str:
    """How the shared LoRA A was made and trained, for zoos built with a non-default A."""
    parts = []
    kind = tr.get("lora_a_init", "random")
    if kind == "warmup":
        parts.append(f"A warmed up {tr['lora_a_warmup_steps']} steps on all tasks")
    elif kind != "random":
        parts.append(f"A from {kind}")
    ratio = tr.get("lora_a_lr_ratio", 1.0)
    if ratio != 1.0:
        parts.append(f"A trained at {ratio:g}x B's learning rate")
    return f"({', '.join(parts)}) " if parts else ""


def _print_info(zoo) -> None:
    m = zoo.manifest
    model = m["model"]
    typer.echo(f"zoo: {zoo.root}")
    typer.echo(f"profile {m['profile']}, seed {m['seed']}, format v{m['format_version']}, built in {m.get('build_seconds')} s")
    typer.echo(
        f"base: Llama {model['layers']} layers, width {model['hidden']}, vocab {model['vocab']}, "
        f"{model['params']:,} parameters ({model.get('stored_dtype', 'float32')}) -> {zoo.base_dir}"
    )
    tr = m["training"]
    typer.echo(f"experts: LoRA r={tr['rank']} alpha={tr['alpha']} on {','.join(tr['target_modules'])}, "
               f"{tr['expert_steps']} steps each, {'one shared' if tr.get('shared_init') else 'per-expert'} LoRA init "
               f"{_a_init_note(tr)}(base: {tr['base_steps']} steps)")
    if zoo.full_dirs:
        typer.echo(f"full fine-tunes: {tr['full_steps']} steps each -> {zoo.root / 'full'}")
    typer.echo("related pairs: " + (", ".join(f"{a}~{b}" for a, b in zoo.related_pairs) or "none"))
    if "ab_fidelity" in m:
        typer.echo(f'"ab" average vs delta average of all experts: relative error {m["ab_fidelity"]:.4f}')
    scores = m.get("scores", {}).get("test", {})
    has_full = any("full" in s for s in scores.values())
    typer.echo(f"{'task':14s} {'domain':9s} {'base tok-acc':>12s} {'expert tok-acc':>14s}"
               + (f" {'full tok-acc':>12s}" if has_full else "") + f" {'base EM':>8s} {'expert EM':>9s}")
    for t in m["tasks"]:
        s = scores.get(t["name"])
        if s is None:
            continue
        b, e = s["base"], s["expert"]
        typer.echo(f"{t['name']:14s} {t['domain']:9s} {b['token_accuracy']:12.3f} {e['token_accuracy']:14.3f}"
                   + (f" {s['full']['token_accuracy']:12.3f}" if has_full else "")
                   + f" {b['exact_match']:8.3f} {e['exact_match']:9.3f}")


def register(app: typer.Typer) -> None:
    app.add_typer(zoo_app, name="zoo")
