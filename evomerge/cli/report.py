"""``evomerge report RUN_DIR``: regenerate the tables, figures and report.md of a scale run."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("report", help=(
        "Rebuild tables/*.parquet, figures/*.png and report.md from the run's finished cells.\n\n"
        "The run's saved config.yaml is used; --set changes how the stop rules are judged: scale.law_first_k, "
        "scale.law_noise_z, scale.online_tol, scale.online_window only. Every other key describes the cells "
        "already run (methods, seeds, k grid, RHT, searches, ...) and is refused.\n\n"
        "A cell file that cannot be read is refused by name; `evomerge scale --out RUN --resume` computes that "
        "cell again. So is any other file of the run the report reads (plan.json, expert_gains.json, "
        "search_stop.json, timing.json, analysis/summary.json, a search's result.json, population_test.json or "
        "history.parquet).\n\n"
        "A run with planned cells that have no file (interrupted, or a file lost; cells the stop rule skipped "
        "are not missing) is reported with those cells named in the header and the curves they belong to "
        "left out of the peaks, the rule table and the fits."))
    def report(
        run_dir: Path = typer.Argument(..., help="a scale run directory (evomerge scale --out)"),
        sets: list[str] = typer.Option([], "--set", "-s", metavar="KEY=VALUE",
                                       help="judge the rules with another scale.law_first_k, "
                                            "law_noise_z, online_tol or online_window, e.g. "
                                            "scale.law_first_k=3 (repeatable)"),
    ) -> None:
        """The command's help is its ``help=`` (one line per paragraph: the help keeps line breaks)."""
        from evomerge.config.overrides import parse_sets
        from evomerge.pipelines.scale.report import check_report_sets, write_report

        values = parse_sets(sets)
        check_report_sets(values)  # (write_report checks them too) before anything is read
        path = write_report(run_dir, values or None)
        typer.echo(f"report: {path}")
        _warn_missing(path.parent)


def _warn_missing(run_dir: Path) -> None:
    """One stderr line when the run lacks planned cells (the report's header names them)."""
    import json

    missing = json.loads((run_dir / "report.json").read_text()).get("cells_missing") or []
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        typer.echo(f"report: warning: {len(missing)} planned cell(s) of {run_dir} have no file ({shown}): the report "
                   f"leaves their curves out; `evomerge scale --out {run_dir} --resume` computes them", err=True)
