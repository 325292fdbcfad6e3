"""``evomerge report RUN_DIR``: regenerate the tables, figures and report.md of a scale run."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(run_dir: Path = typer.Argument(..., help="a scale run directory (evomerge scale --out)")) -> None:
        """Rebuild tables/*.parquet, figures/*.png and report.md from the run's finished cells."""
        from evomerge.pipelines.scale.report import write_report

        typer.echo(f"report: {write_report(run_dir)}")
