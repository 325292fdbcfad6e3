"""``evomerge scale``: fitness vs. number of merged experts, and the stop rules judged against it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from evomerge.cli._common import set_option, small_option, zoo_option


def register(app: typer.Typer) -> None:
    @app.command("scale")
    def scale(
        out: Optional[Path] = typer.Option(None, "--out", help="run directory (tables, figures, report.md); required"),
        config: Optional[Path] = typer.Option(None, "--config", help="YAML config (default: the built-in scale config)"),
        small: bool = small_option(),
        zoo_arg: Optional[str] = zoo_option(),
        sets: list[str] = set_option(),
        no_stop: bool = typer.Option(False, "--no-stop", help="run the searches over the whole k grid; only record where the rules fire"),
        resume: bool = typer.Option(False, "--resume", help="continue the run in --out with its saved config"),
        no_overlap: bool = typer.Option(False, "--no-overlap", help="run each step after the other: the pool analysis, the searches, then the merge cells (same results; by default they overlap)"),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run in --out"),
        progress: bool = typer.Option(True, "--progress/--no-progress", " /-q", help="progress bars (--no-progress or -q: none, the libraries' model-loading bars included)"),
        print_default_config: bool = typer.Option(False, "--print-default-config", help="print the built-in config and exit"),
        print_config: bool = typer.Option(False, "--print-config", help="print the config these options give (--preset, --config, --set, --zoo; --resume: the run's) and exit; nothing runs"),
        preset: Optional[str] = typer.Option(None, "--preset", metavar="paper",
                                             help="paper: the seed paper's Table 1 protocol (k = 2, 4, ..., 10, 5 seeds)"),
    ) -> None:
        """Merge k = 1, 2, ... N experts with every configured method (and seed, with and without
        RHT), run the searches over a grid of k cut short by the stop rule, evaluate, and write a
        report that judges the stop rules against the measured peaks.

        Rerunning with the same config continues from the cells already finished.
        """
        if print_default_config:
            import yaml

            from evomerge.errors import ConfigError
            from evomerge.pipelines.scale.defaults import DEFAULT_SCALE_CONFIG

            given = [flag for flag, v in (("--config", config), ("--preset", preset), ("--set", sets),
                                          ("--small", small), ("--zoo", zoo_arg), ("--resume", resume),
                                          ("--no-stop", no_stop), ("--print-config", print_config)) if v]
            if given:
                raise ConfigError(f"--print-default-config prints the built-in config, which {', '.join(given)} "
                                  "would not change; --print-config prints the config they give")
            typer.echo(yaml.safe_dump(DEFAULT_SCALE_CONFIG, sort_keys=False))
            return
        if print_config:
            import yaml

            if resume and out is None:
                import click

                raise click.MissingParameter(param_hint="'--out'", param_type="option")
            profile, asked, cfg = _resolve_config(out, config, small, zoo_arg, sets, resume, preset)
            if no_stop:  # as run_scale lays it over the config
                from evomerge.config.overrides import override

                cfg = override(cfg, {"scale.stop": False}, "--no-stop")
            if not cfg.experts.experts and cfg.zoo_dir is None:  # the built-in zoo is no key of the config
                profile = _zoo_profile(out, resume, asked, profile)
                typer.echo(f"# runs on the built-in `{profile}` zoo: pass --zoo {profile} with this config")
            typer.echo(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True), sort_keys=False))
            return
        if out is None:  # required, but not to print the config
            import click

            raise click.MissingParameter(param_hint="'--out'", param_type="option")
        from evomerge.cli import _common

        # before the first child starts: SIGTERM, too, cleans up; the line is built once the
        # interrupt (also one during _run's own cleanup) has come: resume, or nothing written yet
        with _common.interruptible(lambda: interrupted_message(out)):
            _run(out, config, small, zoo_arg, sets, no_stop, resume, no_overlap, overwrite, progress, preset)


def _run(out: Path, config: Optional[Path], small: bool, zoo_arg: Optional[str], sets: list[str], no_stop: bool,
         resume: bool, no_overlap: bool, overwrite: bool, progress: bool, preset: Optional[str]) -> None:
    """The run, its prewarmed child, and what an interrupt leaves: every child ended, Ray stopped
    (``run_scale`` sees to both), then one line saying how to resume."""
    import sys

    from evomerge.cli import _common
    from evomerge.pipelines.scale.start import discard_prewarmed, prewarm_analysis

    if not progress:
        _common.quiet_progress_bars()  # before the prewarmed child and Ray start: they inherit it
    try:
        # the config first (a refusal in a fraction of a second, before torch is imported or a child started)
        resolved = _resolve_config(out, config, small, zoo_arg, sets, resume, preset)
        if not resume and not no_overlap and (overwrite or not (out / "config.yaml").is_file()):
            prewarm_analysis()  # a fresh run: the analysis's child does its imports beside ours
        _scale(out, resolved, no_stop, resume, no_overlap, overwrite, progress)
    finally:
        discard_prewarmed()
        ray = sys.modules.get("ray")
        # the report is written (or the run was interrupted and cleaned up), the Ray this run
        # started is stopped (run_scale waited for it), no child is left; a driver still
        # connected to a cluster it joined leaves it as usual
        _common.FAST_EXIT = ray is None or not ray.is_initialized()


def interrupted_message(out: Path) -> str:
    """The line an interrupted run prints: how to resume it, or (no run directory yet) that
    nothing was written."""
    import shlex

    if (out / "config.yaml").is_file():
        return f"interrupted; resume with: evomerge scale --out {shlex.quote(str(out))} --resume"
    return "interrupted before the run directory was written; nothing to resume (start the run again)"


def _scale(out: Path, resolved, no_stop: bool, resume: bool, no_overlap: bool, overwrite: bool, progress: bool) -> None:
    from evomerge.pipelines.scale.driver import run_scale

    profile, asked, cfg = resolved
    zoo = None
    if not cfg.experts.experts:
        from evomerge.zoo import ensure_zoo

        zoo = ensure_zoo(_zoo_profile(out, resume, asked, profile), cfg.zoo_dir, progress=progress)
    result = run_scale(cfg, out, zoo=zoo, stop=False if no_stop else None, overwrite=overwrite, progress=progress,
                       overlap=not no_overlap)
    s = result.stop
    typer.echo(
        f"scale: {result.cells_run} cells run, {result.cells_skipped} already done, {result.evaluations} evaluations, "
        f"{result.seconds / 60:.1f} min; sigma2={s.sigma2:.3g} rho={s.rho:.3f}; Theorem 1 (eq. 18, {s.delta_mode} "
        + (f"Delta={s.delta:.3g}) keeps {s.n_max}" if s.delta is not None
           else f"Delta: none, no positive drop to scale; while the variance falls) keeps {s.n_max}")
        + closing_stop_text(s.rule, s.enabled, no_stop, bool(cfg.scale.search))
    )
    typer.echo(f"report: {result.report}")


def _zoo_profile(out: Path, resume: bool, asked: Optional[str], profile: str) -> str:
    """The built-in zoo a run uses: ``profile``, or on ``--resume`` the one the run started with
    (another asked for with --zoo / --small is refused)."""
    from evomerge.errors import ConfigError

    if not resume:
        return profile
    from evomerge.pipelines.scale.interrupt import recorded_zoo

    recorded = recorded_zoo(out)
    if asked is not None and recorded is not None and profile != recorded:
        raise ConfigError(f"--resume: the run in {out} was started on the `{recorded}` zoo, not `{profile}`; "
                          "drop --zoo / --small to continue it, or use another --out")
    return recorded or profile


def closing_stop_text(rule: str, enabled: bool, no_stop: bool, searches: bool) -> str:
    """What the closing line says of the searches' stop: the rule, or why the grid was not cut
    (``--no-stop`` only when it was given: a preset, a config or a resumed run's saved config sets
    ``scale.stop: false`` too)."""
    if not searches:
        return "; no searches"
    if enabled:
        return f"; the searches' k grid under the {rule} rule"
    why = "--no-stop" if no_stop else "scale.stop: false"
    return f"; the searches' k grid not cut ({why}: the {rule} rule is only recorded)"


def _resolve_config(out: Optional[Path], config: Optional[Path], small: bool, zoo_arg: Optional[str], sets: list[str],
                    resume: bool, preset: Optional[str]):
    """``(zoo profile, the zoo asked for or None, config)`` of the options: the run's saved config
    (``--resume``), a preset, or the built-in config / ``--config`` with ``--set`` laid over it."""
    from evomerge.config import load_config
    from evomerge.errors import ConfigError

    if resume:
        if preset is not None:
            raise ConfigError("--resume uses the config saved in --out; do not pass --preset as well")
        if config is not None:
            raise ConfigError("--resume uses the config saved in --out; do not pass --config as well")
        saved = out / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume: {saved} not found (no scale run to continue in {out})")
        if sets:
            raise ConfigError("--resume uses the config saved in --out; do not pass --set as well")
        cfg = load_config(saved)
    elif preset is not None:
        from evomerge.config import config_from_dict, load_config_data
        from evomerge.config.overrides import parse_sets
        from evomerge.pipelines.scale.defaults import preset_data

        user = load_config_data(config) if config is not None else None
        cfg = config_from_dict(preset_data(preset, user, parse_sets(sets), user_source=str(config)),
                               f"--preset {preset}")
    else:
        from evomerge.cli._common import load_config_with_sets
        from evomerge.pipelines.scale.defaults import DEFAULT_SCALE_CONFIG

        cfg = load_config_with_sets(config, sets, defaults=DEFAULT_SCALE_CONFIG)
    from evomerge.cli._common import zoo_choice, zoo_settings

    asked = zoo_choice(zoo_arg, small)
    profile, cfg = zoo_settings(asked, cfg, "default")
    return profile, asked, cfg
