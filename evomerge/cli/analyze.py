"""``evomerge analyze``: the pool's variance floor, PCA, principal angles and tails."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from evomerge.cli._common import set_option
from evomerge.errors import ConfigError


def _delta(text: Optional[str]) -> float | str | None:
    if text is None or text == "adaptive":
        return text
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--delta must be a number > 0 or 'adaptive', got {text!r}") from None
    if not value > 0:
        raise ConfigError(f"--delta must be > 0, got {value}")
    return value


def _stop_note(summary: dict) -> str:
    """What the pool's ``n_max`` means for it (``summary``: :func:`~evomerge.analysis.analyze_pool`'s):
    ``stop_k`` = min(n_max, n) experts to merge. ``n_max`` (:func:`evomerge.theory.variance.n_max`)
    is the largest k whose drop from k - 1 to k reaches Delta
    (:func:`~evomerge.theory.general_variance.reaches_delta`), 1 when none does: the experts that
    each lower the variance are the 2nd to the n_max-th (the first lowers nothing). With
    sigma^2 (1 - rho) = 0 no expert after the first lowers it at all, and Delta may be 0 too."""
    n_max, stop_k, n = summary["n_max"], summary["stop_k"], summary["n_experts"]
    merge_all = "merge all" if n > 1 else "merge it"
    if n_max > n:  # the count is the theorem's, for a pool of experts like these of any size
        return (f"growing a merge of experts like these from 1 to {n_max}, each one added lowers the merged "
                f"variance by >= Delta; this pool has {n}: {merge_all}")
    if stop_k == n:
        return merge_all
    if summary["sigma2"] * (1.0 - summary["rho"]) <= 0:  # as n_max tests it: every drop is 0
        return f"merge {stop_k} of the {n}: no expert after the first lowers the merged variance (sigma^2 (1 - rho) = 0)"
    return f"merge {stop_k} of the {n}: the next would lower the merged variance by less than Delta"


def analyze_command(
    expert: list[Path] = typer.Option([], "--experts", "--expert", "-e", help="expert folder (peft adapter or HF checkpoint); repeat"),
    base: Optional[Path] = typer.Option(None, "--base", help="base model checkpoint (needed for full fine-tunes)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config: experts, rht and scale.delta (flags override)"),
    out: Path = typer.Option(..., "--out", "-o", help="output folder (tables, figures, summary.json)"),
    delta: Optional[str] = typer.Option(None, "--delta", help="variance-drop threshold Delta, or 'adaptive' (default)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="seed for sampling and RHT"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output folder"),
    allow_bin: bool = typer.Option(False, "--allow-bin", help="accept pickle .bin weights (weights_only=True)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
    sets: list[str] = set_option(),
) -> None:
    """Analyse an expert pool: sigma^2, rho, n_max, PCA components for 95%, principal angles."""
    from evomerge.analysis import analyze_pool
    from evomerge.cli._common import load_config_with_sets
    from evomerge.experts.pool import load_pool
    from evomerge.io import check_not_overlapping, check_output_path
    from evomerge.theory.geometry import pca_ceiling_note

    cfg = load_config_with_sets(config, sets)
    paths = list(expert) or [s.path for s in cfg.experts.experts]
    names = None if expert else [s.name for s in cfg.experts.experts]
    if not paths:
        raise ConfigError("no experts: pass --experts PATH (repeat) or list them under experts.experts in --config")
    base_dir = base if base is not None else cfg.experts.base
    # the overlap first: the writability probe of check_output_path would create an entry in an input
    check_not_overlapping(out, [*paths, base_dir, config])  # --overwrite would delete an input
    check_output_path(out, overwrite)  # before the pool is read
    pool = load_pool(paths, base_dir, allow_bin=allow_bin or cfg.experts.allow_bin, names=names)
    d = _delta(delta) if delta is not None else (cfg.scale.delta if config is not None or sets else None)
    result = analyze_pool(pool, out, delta=d, delta_fraction=cfg.scale.delta_fraction, rht_cfg=cfg.rht, seed=cfg.seed if seed is None else seed,
                          overwrite=overwrite, progress=not quiet)
    s = result.summary
    angle = "n/a" if s["mean_principal_angle"] is None else f"{s['mean_principal_angle']:.1f} deg"
    if s["principal_angle_random_deg"] is not None:
        angle += f"   (random subspaces of the same shapes: {s['principal_angle_random_deg']:.1f} deg)"
    typer.echo(f"experts:            {s['n_experts']} {s['kind']} ({s['n_params']} task-vector entries)")
    typer.echo(f"sigma^2:            {s['sigma2']:.4g}")
    typer.echo(f"rho:                {s['rho']:.4f}   (variance floor sigma^2 max(rho, 0) = {s['variance_floor']:.4g})")
    typer.echo(f"Delta:              {s['delta']:.4g}   ({s['delta_mode']})")
    typer.echo(f"n_max:              {s['n_max']}   ({_stop_note(s)})")
    note = pca_ceiling_note(s["pca_components"], s["n_experts"])
    typer.echo(f"PCA 95% components: {s['pca_components']}" + (f"   ({note}; no low-rank structure shown)" if note else ""))
    typer.echo(f"mean principal angle: {angle}")
    typer.echo(f"results:            {out}")
    from evomerge.cli import _common

    _common.FAST_EXIT = True  # written atomically, closed, no child: skip the interpreter's teardown


def register(app: typer.Typer) -> None:
    app.command("analyze")(analyze_command)
