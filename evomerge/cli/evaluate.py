"""``evomerge evaluate``: score the base model and adapters on task splits."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from evomerge.errors import ConfigError, DataError


def _user_tasks(items: list[str], split: str) -> dict:
    """``name=FILE`` (that file is the split) or ``name=DIR`` (DIR/<split>.parquet|.jsonl)."""
    from evomerge.data import load_examples

    tasks = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--task {item!r}: expected name=FILE or name=DIR")
        p = Path(path)
        if p.is_dir():
            found = [p / f"{split}{ext}" for ext in (".parquet", ".jsonl", ".json") if (p / f"{split}{ext}").is_file()]
            if not found:
                raise DataError(f"{p}: no {split}.parquet or {split}.jsonl in this task folder")
            p = found[0]
        tasks[name] = {split: load_examples(p)}
    return tasks


def evaluate_command(
    experts: list[Path] = typer.Option([], "--expert", "-e", help="peft adapter folder to score (repeatable)"),
    zoo: Optional[Path] = typer.Option(None, "--zoo", help="zoo folder: its base, tasks and (without --expert) experts"),
    small: bool = typer.Option(False, "--small", help="use (and build if needed) the cached small zoo"),
    base: Optional[Path] = typer.Option(None, "--base", help="HF base model folder (with --task)"),
    task: list[str] = typer.Option([], "--task", "-t", help="user task name=FILE|DIR (repeatable)"),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="comma-separated subset of the zoo's tasks"),
    split: str = typer.Option("validation", "--split", help="validation (for choices) or test (report only)"),
    metric: str = typer.Option("token_accuracy", "--metric"),
    max_samples: int = typer.Option(200, "--max-samples"),
    batch_size: int = typer.Option(64, "--batch-size"),
    device: str = typer.Option("cpu", "--device"),
    out: Optional[Path] = typer.Option(None, "--out", help="write a long Parquet table (candidate, task, metric, value)"),
) -> None:
    """Score the base model and each expert on every task; print a table (rows: candidates)."""
    from evomerge.evaluation import Evaluator
    from evomerge.experts.peft_io import load_peft_adapter

    names = [t for t in (tasks or "").split(",") if t] or None
    if task:
        if base is None:
            raise ConfigError("--task needs --base (the HF model folder the experts were trained from)")
        ev = Evaluator(base, _user_tasks(task, split), metric=metric, device=device, batch_size=batch_size,
                       max_samples=max_samples)
        cands = {"base": {}}
    else:
        from evomerge.zoo import Zoo, ensure_zoo

        z = Zoo.open(zoo) if zoo is not None else ensure_zoo("small" if small else "default", progress=True)
        ev = Evaluator.from_zoo(z, tasks=names, metric=metric, max_samples=max_samples, device=device,
                                batch_size=batch_size)
        cands = {"base": {}}
        if not experts:
            cands.update({t: load_peft_adapter(d).modules for t, d in z.expert_dirs.items()})
    for e in experts:
        cands[e.name] = load_peft_adapter(e).modules
    results = ev.evaluate_many(list(cands.values()), split=split)
    width = max(10, *(len(t) for t in ev.tasks))
    typer.echo(f"{metric} on {split} ({max_samples} samples max per task)")
    typer.echo(f"{'candidate':16s} " + " ".join(f"{t[:width]:>{width}s}" for t in ev.tasks) + f" {'fitness':>9s}")
    for name, r in zip(cands, results):
        typer.echo(f"{name[:16]:16s} " + " ".join(f"{r.per_task[t]:{width}.3f}" for t in ev.tasks) + f" {r.fitness:9.3f}")
    if out is not None:
        import pyarrow as pa

        from evomerge.io import write_parquet_atomic

        rows = [(n, t, k, float(v)) for n, r in zip(cands, results) for t, ms in r.extra["metrics"].items()
                for k, v in ms.items()]
        write_parquet_atomic(out, pa.table({
            "candidate": [r[0] for r in rows], "task": [r[1] for r in rows], "metric": [r[2] for r in rows],
            "value": [r[3] for r in rows], "split": [split] * len(rows),
        }))
        typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_command)
