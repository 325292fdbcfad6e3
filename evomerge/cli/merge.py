"""``evomerge merge`` (one merge from a YAML config and/or flags) and ``evomerge methods``."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Optional

import typer

from evomerge.cli._common import set_option
from evomerge.errors import ConfigError


def _parse_params(items: list[str]) -> dict[str, Any]:
    """``--param key=value`` -> ``{"merge.params.key": value}`` (values are YAML 1.2)."""
    from evomerge.config.overrides import parse_sets

    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip() or "." in key:
            raise ConfigError(f"--param {item!r}: expected key=value (e.g. --param density=0.5)")
    return {f"merge.params.{k}": v for k, v in parse_sets(items, "--param").items()}


def _parse_weights(text: str) -> list[float]:
    try:
        return [float(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise ConfigError(f"--weights {text!r}: expected comma-separated numbers (e.g. 0.5,0.3,0.2)") from None


def build_config(
    config: Optional[Path], *, experts: list[Path], base: Optional[Path], method: Optional[str],
    params: list[str], space: Optional[str], weights: Optional[str], rank: Optional[int], rht: Optional[bool],
    seed: Optional[int], device: Optional[str], allow_bin: bool, fmt: Optional[str], data: list[Path],
    sets: list[str] | None = None,
):
    """The config file (if any) with ``--set`` and then the flags laid over it, validated once."""
    from evomerge.cli._common import load_config_with_sets

    given = [  # (flag, config key, value): the flags are shorthands for these keys
        ("--expert", "experts.experts", [{"path": str(p)} for p in experts] or None),
        ("--base", "experts.base", None if base is None else str(base)),
        ("--allow-bin", "experts.allow_bin", True if allow_bin else None),
        ("--method", "merge.method", method),
        ("--space", "merge.space", space),
        ("--weights", "merge.weights", None if weights is None else _parse_weights(weights)),
        ("--rank", "merge.rank", rank),
        ("--format", "merge.output_format", fmt),
        ("--data", "merge.data", [str(p) for p in data] or None),
        ("--rht" if rht else "--no-rht", "rht.enabled", rht),
        ("--seed", "seed", seed),
        ("--device", "device", device),
        *(("--param", key, value) for key, value in _parse_params(params).items()),
    ]
    flags = {key: value for _, key, value in given}
    check_param_flags(method, flags)
    return load_config_with_sets(config, sets or [], flags, {key: flag for flag, key, _ in given})


def check_param_flags(method: Optional[str], flags: dict[str, Any]) -> None:
    """``--param`` values checked against the schema of the ``--method`` flag's method before the
    config is assembled, so a refusal names the flags that carry the value (``--method + --param``),
    not every flag that set a key of the merge section (``--rank``, ``--space``, ...)."""
    params = {k[len("merge.params."):]: v for k, v in flags.items() if k.startswith("merge.params.")}
    if method is None or not params:
        return
    from evomerge.merging.registry import get_merge_method

    try:
        m = get_merge_method(method)
    except ConfigError:
        return  # an unknown method: refused by the config check, which names --method
    try:
        for name, value in params.items():
            m.param(name).validate(value, f"merge method `{m.name}`")
    except ConfigError as err:
        raise ConfigError(f"--method + --param: {err}") from None


def merge_command(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (flags override it)"),
    expert: list[Path] = typer.Option([], "--expert", "-e", help="expert folder (peft adapter or HF checkpoint); repeat"),
    base: Optional[Path] = typer.Option(None, "--base", help="base model checkpoint folder"),
    method: Optional[str] = typer.Option(None, "--method", "-m", help="merge method (see `evomerge methods`)"),
    param: list[str] = typer.Option([], "--param", "-p", help="method parameter key=value; repeat"),
    space: Optional[str] = typer.Option(None, "--space", help="LoRA merge space: delta | ab | concat"),
    weights: Optional[str] = typer.Option(None, "--weights", help="comma-separated weight per expert"),
    rank: Optional[int] = typer.Option(None, "--rank", help="rank of the written adapter for space=delta (SVD)"),
    rht: Optional[bool] = typer.Option(None, "--rht/--no-rht", help="apply RHT to the merged weights"),
    seed: Optional[int] = typer.Option(None, "--seed", help="random seed"),
    data: list[Path] = typer.Option([], "--data", help="task file for Fisher/RegMean statistics; one per expert or one"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output folder (default: `output` of the config)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output folder"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda | cuda:N"),
    allow_bin: bool = typer.Option(False, "--allow-bin", help="accept pickle .bin weights (weights_only=True)"),
    fmt: Optional[str] = typer.Option(None, "--format", help="output: peft | full | auto"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars (also the libraries' own)"),
    sets: list[str] = set_option(),
) -> None:
    """Merge experts into one peft adapter or full checkpoint, with a manifest of how."""
    from evomerge.pipelines.merge.job import run_merge

    cfg = build_config(
        config, experts=expert, base=base, method=method, params=param, space=space, weights=weights, rank=rank,
        rht=rht, seed=seed, device=device, allow_bin=allow_bin, fmt=fmt, data=data, sets=sets,
    )
    check_method_fits(cfg)
    if out is None and cfg.output and "://" in cfg.output:
        raise ConfigError(f"output {cfg.output!r}: `evomerge merge` writes to a local folder; pass --out PATH")
    target = out if out is not None else (Path(cfg.output) if cfg.output else None)
    if target is None:
        raise ConfigError("no output folder: pass --out PATH (or `output:` in the config)")
    from evomerge.cli import _common
    from evomerge.cli._common import interruptible, library_bars_off

    # -q: also the libraries' bars (transformers' "Loading weights" of the statistics' model)
    with interruptible(lambda: interrupted_message(target)), library_bars_off() if quiet else contextlib.nullcontext():
        result = run_merge(cfg, target, overwrite=overwrite, device=cfg.device, progress=not quiet, log=typer.echo)
    typer.echo(f"merged model: {result}")
    typer.echo(f"manifest:     {result / 'evomerge_manifest.json'}")
    _common.FAST_EXIT = True  # written atomically, closed, no child: skip the interpreter's teardown


def check_method_fits(cfg) -> None:
    """Before any work: the method takes this many experts (the registry's operator run on a
    stack of zero task vectors, one per expert, with the config's parameters and weights: its
    own refusal, e.g. slerp's "exactly 2 experts", comes now rather than at the first tensor),
    and a per-task method (EMR, whose layout is a unified vector plus masks, not an adapter) is
    not given a rank."""
    from evomerge.merging.registry import get_merge_method

    method = get_merge_method(cfg.merge.method)
    if method.per_task and cfg.merge.rank is not None:
        raise ConfigError(
            f"--rank {cfg.merge.rank} (merge.rank): merge method `{method.name}` writes its own per-task layout "
            "(unified vector + masks, docs/merging.md), not a LoRA adapter, so there is no rank to write; drop --rank"
        )
    # no pool: refused when it is loaded
    method.check_pool_size(len(cfg.experts.experts), cfg.merge.params, cfg.merge.weights)


def interrupted_message(target: Path) -> str:
    """A merge writes into a temporary folder that replaces ``target`` only when it is done:
    an interrupted one leaves ``target`` as it was."""
    return (f"interrupted: evomerge merge stopped before it finished; {target} is as it was "
            "(nothing to resume: run it again)")


def methods_command() -> None:
    """List the merge methods and their parameters (from the registry)."""
    from evomerge.merging.registry import all_methods

    for name, m in sorted(all_methods().items()):
        flags = [f for f, on in (("linear", m.linear), ("random", m.random), ("per-task", m.per_task)) if on]
        if m.needs:
            flags.append("needs " + "+".join(sorted(m.needs)))
        typer.echo(f"{name}" + (f"  [{', '.join(flags)}]" if flags else "") + (f"\n    {m.description}" if m.description else ""))
        for p in m.params:
            rng = f" in {p.interval()}" if p.kind in (int, float) else (f" one of {list(p.choices)}" if p.choices else "")
            typer.echo(f"    --param {p.name}=<{p.kind.__name__}>  default {p.default!r}{rng}" + (f"  {p.help}" if p.help else ""))


def register(app: typer.Typer) -> None:
    app.command("merge")(merge_command)
    app.command("methods")(methods_command)
