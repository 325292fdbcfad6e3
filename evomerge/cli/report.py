"""``evomerge report RUN_DIR``: regenerate the tables, figures and report.md of a scale run."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("report", help=(
        "Rebuild tables/*.parquet, figures/*.png and report.md from the run's finished cells.\n\n"
        "The run's saved config.yaml is used; --set scale.KEY=VALUE changes how the stop rules are judged "
        "(e.g. scale.law_first_k); keys outside scale.* would not match the cells already run and are refused."))
    def report(
        run_dir: Path = typer.Argument(..., help="a scale run directory (evomerge scale --out)"),
        sets: list[str] = typer.Option([], "--set", "-s", metavar="KEY=VALUE",
                                       help="judge the rules with another scale.* setting, e.g. "
                                            "scale.law_first_k=3 (repeatable)"),
    ) -> None:
        """The command's help is its ``help=`` (one line per paragraph: the help keeps line breaks)."""
        from evomerge.config.overrides import parse_sets
        from evomerge.errors import ConfigError
        from evomerge.pipelines.scale.report import write_report

        values = parse_sets(sets)
        for key in values:
            if not key.startswith("scale."):
                raise ConfigError(f"--set {key}: `evomerge report` judges the cells already run; only scale.* keys "
                                  "can change (rerun `evomerge scale` for the others)")
        typer.echo(f"report: {write_report(run_dir, values or None)}")
