"""``evomerge evaluate``: score the base model and experts (peft adapters, full fine-tunes) on task splits."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from evomerge.cli._common import set_option, small_option, zoo_option
from evomerge.errors import ConfigError


def _task_items(items: list[str]) -> dict[str, str] | None:
    """``--task name=FILE|DIR`` items as ``evaluation.task_files``."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--task {item!r}: expected name=FILE or name=DIR")
        if name in out:
            raise ConfigError(f"--task {item!r}: task `{name}` is given twice")
        out[name] = path
    return out or None


def _select(names: list[str] | None, known: list[str], flag: str, what: str) -> list[str]:
    """The tasks ``--tasks`` (``evaluation.tasks``) names, in its order; all of ``known`` without
    it. A name that is not among ``known`` is refused naming the tasks there are."""
    if names is None:
        return list(known)
    unknown = [t for t in names if t not in known]
    if unknown:
        raise ConfigError(f"{flag}: unknown task(s) {', '.join(unknown)}; {what}: {', '.join(known)}")
    return list(dict.fromkeys(names))


def _user_tasks(task_files: dict, split: str, sources: dict[str, str]) -> dict:
    """``name -> DIR`` (DIR/<split>.parquet|.jsonl|.json) or ``name -> FILE``: a single file is the
    validation split, so another ``split`` of it is refused (``load_task``), never relabelled."""
    from evomerge.evaluation.task_data import load_task

    return {name: load_task(path, (split,), source=sources[name]) for name, path in task_files.items()}


def _full_task_vector(folder: Path, base_dir: Path, allow_bin: bool) -> dict:
    """A full fine-tune's task vector against ``base_dir``, read and checked as ``evomerge merge``
    reads a pool (same architecture, tensor names and shapes, finite weights); the tensors it
    leaves unchanged are left out (the evaluator applies the rest to the base)."""
    from evomerge.experts.pool import load_pool

    return {k: v for k, v in load_pool([folder], base=base_dir, allow_bin=allow_bin).task_vector(0).items()
            if bool(v.any())}


def _candidates(named: list[tuple[str, Path, str]], base_dir: Path, allow_bin: bool) -> dict:
    """The experts as the evaluator applies them, by name: a full fine-tune's task vector
    (:func:`_full_task_vector`) or a LoRA adapter's modules. The adapters are read together under
    the base rule of `evomerge merge` (:func:`evomerge.experts.pool.read_adapters`: each against
    ``base_dir``, then one base named by all; an adapter of another base is refused naming its
    adapter file), before any model is loaded; unlike a merge pool, they may adapt other modules."""
    from evomerge.experts.pool import detect_kind, read_adapters

    lora = [(name, folder) for name, folder, _ in named if detect_kind(folder) == "lora"]
    adapters = dict(zip((name for name, _ in lora), read_adapters([f for _, f in lora], base_dir, allow_bin)))
    return {name: (dict(adapters[name].modules) if name in adapters else _full_task_vector(folder, base_dir, allow_bin))
            for name, folder, _ in named}


def evaluate_command(
    experts: list[Path] = typer.Option([], "--expert", "-e", help="expert folder to score: a peft adapter or a full fine-tune (HF checkpoint of the base); repeatable"),
    zoo: Optional[str] = zoo_option(),
    small: bool = small_option(),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (evaluation:, experts.base, experts.experts when no --expert is given, device)"),
    base: Optional[Path] = typer.Option(None, "--base", help="HF base model folder of your own tasks (needs --task): experts.base"),
    task: list[str] = typer.Option([], "--task", "-t", help="user task name=FILE|DIR (repeatable): evaluation.task_files"),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="comma-separated subset of the tasks (the zoo's, or those given with --task): evaluation.tasks"),
    split: str = typer.Option("validation", "--split", help="validation (for choices) or test (report only); a single --task FILE is the validation split"),
    metric: Optional[str] = typer.Option(None, "--metric", help="evaluation.metric (default token_accuracy)"),
    max_samples: Optional[int] = typer.Option(None, "--max-samples", min=1, help="evaluation.max_samples (default 200)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="evaluation.batch_size (default 64)"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda | cuda:N (default cpu)"),
    allow_bin: bool = typer.Option(False, "--allow-bin", help="accept pickle .bin adapter weights (weights_only=True)"),
    out: Optional[Path] = typer.Option(None, "--out", help="write a long Parquet table (candidate, task, metric, value)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --out table"),
    sets: list[str] = set_option(),
) -> None:
    """Score the base model and each expert on every task; print a table (rows: candidates)."""
    from evomerge.cli._common import load_config_with_sets
    from evomerge.devices import resolve_device
    from evomerge.evaluation import Evaluator
    from evomerge.experts.peft_io import load_peft_adapter
    from evomerge.experts.pool import detect_kind
    from evomerge.pipelines.inputs import TASK_SPLITS  # the splits a task has: validation for choices, test for reports

    if split not in TASK_SPLITS:  # before the config, the zoo and the model: a typo would load them all first
        raise ConfigError(f"--split {split}: not a split evaluate scores; use {' or '.join(TASK_SPLITS)}")
    names = [t for t in (tasks or "").split(",") if t] or None
    given = [  # (flag, config key, value)
        ("--base", "experts.base", None if base is None else str(base)), ("--task", "evaluation.task_files", _task_items(task)),
        ("--tasks", "evaluation.tasks", names), ("--metric", "evaluation.metric", metric),
        ("--max-samples", "evaluation.max_samples", max_samples), ("--batch-size", "evaluation.batch_size", batch_size),
        ("--device", "device", device),
    ]
    cfg = load_config_with_sets(config, sets, {key: value for _, key, value in given},
                                {key: flag for flag, key, _ in given})
    ev_cfg = cfg.evaluation
    # the candidates: the --expert folders (named by folder), else the config's experts (by their name)
    named = ([(e.name, e, f"--expert {e}") for e in experts] if experts else
             [(sp.label, Path(sp.path), f"experts.experts[{i}] ({sp.path})")
              for i, sp in enumerate(cfg.experts.experts)])
    experts = [path for _, path, _ in named]
    if cfg.experts.base is not None and not ev_cfg.task_files:
        # the zoo brings its own base: scoring it under a --base the user named would be a lie
        raise ConfigError(f"{'--base' if base is not None else 'experts.base'} {cfg.experts.base}: a base model scores "
                          "your own tasks and needs them: give --task name=FILE|DIR (evaluation.task_files); to "
                          "score a zoo (--zoo/--small) drop --base, the zoo has its own base")
    tasks_flag = "--tasks" if names is not None else "evaluation.tasks"
    task_files = dict(ev_cfg.task_files or {})
    weights = dict(ev_cfg.task_weights or {})
    if task_files:
        chosen = _select(ev_cfg.tasks, list(task_files), tasks_flag, "the tasks given (--task, evaluation.task_files)")
        weights = {t: w for t, w in weights.items() if t in chosen or t not in task_files}  # unknown: refused below
        task_files = {t: task_files[t] for t in chosen}
    if out is not None:  # before any work: a folder, an existing table, an unwritable place, an input
        from evomerge.cli._common import zoo_choice, zoo_folder
        from evomerge.io import check_not_overlapping, check_output_path

        zoo_input = None if task_files else zoo_folder(zoo_choice(zoo, small), "default", cfg.zoo_dir)
        # the overlap first: the writability probe of check_output_path would create an entry in an input
        check_not_overlapping(out, [*experts, cfg.experts.base, *task_files.values(), zoo_input, config])
        check_output_path(out, overwrite, kind="file")
    dev = resolve_device(cfg.device)
    for e in experts:
        detect_kind(e)  # exists, and is an adapter or a checkpoint
    seen = [name for name, _, _ in named]
    dup = next(((name, where) for i, (name, _, where) in enumerate(named) if name in ("base", *seen[:i])), None)
    if dup is not None:
        from evomerge.experts.pool import NAMED_EXPERTS_FORM

        fix = (f"an --expert is named by its folder: to name the candidates, list them in a config, "
               f"{NAMED_EXPERTS_FORM}, and pass it with -c and no --expert"
               if dup[1].startswith("--expert") else "give it another `name`")
        raise ConfigError(f"{dup[1]}: a candidate named `{dup[0]}` is already given; {fix}")
    common = dict(metric=ev_cfg.metric, device=dev, batch_size=ev_cfg.batch_size, max_samples=ev_cfg.max_samples)
    # every expert is read and checked against the base (as `evomerge merge` reads a pool: tensor
    # names and shapes, target modules, finite weights) before the model is loaded
    if task_files:
        if cfg.experts.base is None:
            raise ConfigError("--task needs --base (the HF model folder the experts were trained from)")
        if zoo is not None or small:
            raise ConfigError("--task scores your own tasks on --base; do not pass --zoo/--small as well")
        given_tasks = _task_items(task) or {}
        sources = {t: f"--task {t}" if t in given_tasks else f"evaluation.task_files.{t}" for t in task_files}
        task_data = _user_tasks(task_files, split, sources)
        from evomerge.evaluation.encoding import check_task_encoding

        check_task_encoding(cfg.experts.base, task_data, ev_cfg.max_samples)
        cands = {"base": {}, **_candidates(named, Path(cfg.experts.base), allow_bin)}
        ev = Evaluator(cfg.experts.base, task_data, task_weights=weights, **common)
    else:
        from evomerge.cli._common import open_zoo, zoo_choice

        z = open_zoo(zoo_choice(zoo, small), "default", cfg.zoo_dir)
        chosen = _select(ev_cfg.tasks, list(z.tasks), tasks_flag, f"the tasks of the zoo {z.root}")
        weights = {t: w for t, w in weights.items() if t in chosen or t not in z.tasks}
        cands = {"base": {}, **_candidates(named, z.base_dir, allow_bin)}
        ev = Evaluator.from_zoo(z, tasks=chosen, task_weights=weights, **common)
        if not experts:
            cands.update({t: load_peft_adapter(d).modules for t, d in z.expert_dirs.items()})
    metric, max_samples = ev_cfg.metric, ev_cfg.max_samples
    results = ev.evaluate_many(list(cands.values()), split=split)
    width = max(10, *(len(t) for t in ev.tasks))
    typer.echo(f"{metric} on {split} ({max_samples} samples max per task)")
    first = max([16, *(len(n) for n in cands)])  # whole names: two long ones cut alike would read as one
    typer.echo(f"{'candidate':{first}s} " + " ".join(f"{t[:width]:>{width}s}" for t in ev.tasks) + f" {'fitness':>9s}")
    for name, r in zip(cands, results):
        typer.echo(f"{name:{first}s} " + " ".join(f"{r.per_task[t]:{width}.3f}" for t in ev.tasks) + f" {r.fitness:9.3f}")
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
    from evomerge.cli import _common

    _common.FAST_EXIT = True  # the table is written atomically and closed: skip the interpreter's teardown


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_command)
