"""One merge from config to files: load and validate the pool, merge, optional RHT, write.

Outputs (all written inside one :func:`evomerge.io.atomic_dir`, so a failure leaves nothing):

* ``peft``: ``adapter_config.json`` + ``adapter_model.safetensors`` (``PeftModel.from_pretrained``).
* ``full``: the base checkpoint with the merged task vector added, sharded safetensors in the
  base's dtype, with the base's config and tokenizer files.
* ``emr`` (per-task methods): ``emr_unified.safetensors`` (the unified task vector, fp32),
  ``emr_masks.safetensors`` (per task and tensor, ``mask.<i>.<key>``: the bool mask flattened
  and bit-packed into uint8, ``numpy.packbits`` order) and ``emr_tasks.json`` (task names,
  shapes, rescalers per task and tensor). :func:`load_emr_task` rebuilds one task's vector.
* always ``evomerge_manifest.json``: method, resolved parameters, space, the written adapter's
  rank (``--rank`` capped by the matrix sizes; ``rank_requested`` is ``--rank``), seed, weights,
  ``data_samples`` (statistics methods), RHT, version, and every input with its sha256 content hash.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from evomerge.errors import ConfigError, ExpertLoadError
from evomerge.devices import resolve_device  # noqa: F401 (re-exported: callers import it from here)
from evomerge.experts.pool import EMR_TASKS  # (the expert loader refuses a folder holding it)
from evomerge.experts.types import LoraModule, TensorDict, ab_to_lora, lora_to_ab

MANIFEST = "evomerge_manifest.json"
EMR_UNIFIED = "emr_unified.safetensors"
EMR_MASKS = "emr_masks.safetensors"


def plan_output(cfg, pool, method) -> str:
    """``"peft" | "full" | "emr"``, or :class:`ConfigError` for a combination that cannot work."""
    m = cfg.merge
    fmt = m.output_format
    if m.space != "delta" and pool.kind != "lora":
        raise ConfigError(f"merge.space `{m.space}` applies to LoRA experts; these are full fine-tunes (use delta)")
    if m.space == "ab" and pool.kind == "lora":
        for k in pool.keys():
            ranks = sorted({ad.modules[k].rank for ad in pool.adapters})
            if len(ranks) > 1:
                raise ConfigError(
                    f"merge.space `ab` needs equal LoRA ranks, but `{k}` has ranks {ranks} across experts; "
                    "use space `concat` (linear methods) or `delta`"
                )
    if cfg.rht.enabled and cfg.rht.domain == "factors" and (m.space == "delta" or pool.kind != "lora"):
        raise ConfigError("rht.domain `factors` needs a LoRA factor result (merge.space ab or concat); use rht.domain delta")
    if method.needs and m.space != "delta":
        raise ConfigError(f"merge method `{method.name}` reads per-weight statistics and needs merge.space `delta`")
    if method.per_task:
        if m.space != "delta":
            raise ConfigError(f"merge method `{method.name}` keeps per-task masks of full deltas; use merge.space `delta`")
        if fmt != "auto":
            raise ConfigError(
                f"merge method `{method.name}` writes its own per-task layout (unified vector + masks); "
                f"use output_format auto, not {fmt}"
            )
        return "emr"
    if pool.kind == "full":
        if fmt == "peft":
            raise ConfigError("output_format `peft` needs LoRA experts; full fine-tunes are written as a full checkpoint")
        if m.rank is not None:
            raise ConfigError(f"merge.rank ({m.rank}) truncates a result written as a peft adapter; these are full "
                              "fine-tunes, written as a full checkpoint, which has no rank: drop --rank")
        return "full"
    if fmt == "full":
        if m.rank is not None:
            raise ConfigError(f"merge.rank ({m.rank}) truncates a result written as a peft adapter; output_format "
                              "`full` writes a full checkpoint, which has no rank: drop --rank or --format full")
        pool.require_base("output_format `full`")
        return "full"
    if m.space in ("ab", "concat"):
        dense = cfg.rht.enabled and cfg.rht.domain == "delta"
        if dense and m.rank is None:
            raise ConfigError(
                "rht.domain `delta` turns the LoRA result into dense deltas: pass --rank R (SVD back to an adapter), "
                "output_format full (needs --base), or set rht.domain factors"
            )
        if not dense and m.rank is not None:
            raise ConfigError(
                f"merge.rank ({m.rank}) truncates a dense delta, but merge.space `{m.space}` writes the merged LoRA "
                "factors as they are (no SVD): drop --rank, or use merge.space delta"
            )
        return "peft"
    if m.rank is not None:
        return "peft"
    if fmt == "peft":
        raise ConfigError("writing a peft adapter from merge.space `delta` needs a rank: pass --rank R (truncated SVD)")
    if pool.base is None:
        raise ConfigError(
            "merge.space `delta` without --rank writes a full checkpoint, which needs --base; "
            "or pass --rank R for a peft adapter"
        )
    return "full"


def _weights(cfg, n: int) -> torch.Tensor | None:
    w = cfg.merge.weights
    if w is None:
        return None
    if len(w) != n:
        raise ConfigError(f"merge.weights: give one weight per expert ({n}). Got {len(w)} instead.")
    return torch.tensor(w, dtype=torch.float32)


def _apply_rht(td: TensorDict, cfg, fans: dict[str, bool] | None = None) -> TensorDict:
    from evomerge.merging.rht import apply_rht
    from evomerge.seeding import rht_seed

    return apply_rht(td, cfg.rht, rht_seed(cfg.rht.seed), fan_in_fan_out=fans)


def run_merge(
    cfg,
    out: str | Path,
    *,
    overwrite: bool = False,
    device: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Merge the experts of ``cfg`` into ``out``; returns ``out``. Inputs are only read."""
    from evomerge.experts.pool import load_pool
    from evomerge.io import atomic_dir, check_not_overlapping, check_output_path
    from evomerge.merging.registry import get_merge_method

    log = log or (lambda s: None)
    specs = cfg.experts.experts
    # the overlap first: the writability probe of check_output_path would create an entry in an input
    check_not_overlapping(out, [*(s.path for s in specs), cfg.experts.base, *cfg.merge.data])
    out = check_output_path(out, overwrite)
    dev = resolve_device(device or cfg.device)
    method = get_merge_method(cfg.merge.method)
    params = method.resolve(cfg.merge.params)
    _check_data_is_used(cfg, method)
    # headers and configs first: every refusal they (and the config) decide comes before the value scan,
    # which reads every expert (seconds to minutes for full fine-tunes)
    pool = load_pool(
        [s.path for s in specs], base=cfg.experts.base, allow_bin=cfg.experts.allow_bin, names=[s.name for s in specs],
        values=False,
    )
    weights = _weights(cfg, len(pool))
    fmt = plan_output(cfg, pool, method)
    if fmt == "emr":
        emr_task_names(cfg, pool)
    _check_data(cfg, pool, method)
    pool.check_values(progress=progress)  # NaN/inf, identical experts (warned)
    pool_stats = pool.stats()
    log(pool.summary(pool_stats))
    inputs = _input_hashes(cfg, pool)

    stats = None
    if method.needs:
        from evomerge.experts.statistics import pool_statistics

        stats = pool_statistics(pool, method.needs, cfg.merge.data, cfg.merge.data_samples, dev, progress)

    if fmt == "peft":  # after every check: a merge refused writes no adapter to warn about
        warn_renamed_base(pool)
    modules = None
    with atomic_dir(out, overwrite=overwrite) as tmp:
        if fmt == "emr":
            _merge_emr(cfg, pool, method, params, weights, stats, dev, progress, tmp)
        elif pool.kind == "lora" and cfg.merge.space in ("ab", "concat"):
            modules = _merge_lora_factors(cfg, pool, method, params, weights)
            dense = None
            if cfg.rht.enabled:
                fans = {k: m.fan_in_fan_out for k, m in modules.items()}
                td = _apply_rht(lora_to_ab(modules), cfg, fans)
                if cfg.rht.domain == "factors":
                    modules = ab_to_lora(td, fans)
                else:  # rht.domain delta: dense deltas, an adapter again only by truncated SVD (--rank)
                    from evomerge.merging.apply import svd_to_lora

                    dense = td
                    modules = {k: svd_to_lora(v, cfg.merge.rank, fans[k]) for k, v in td.items()} if fmt == "peft" else None
            _write(fmt, cfg, pool, modules, dense, tmp, progress)
        else:
            from evomerge.merging.apply import merge_task_vectors

            merged = merge_task_vectors(
                method, pool.iter_stacked(device=dev), weights, params, cfg.seed, stats=stats, device=dev, progress=progress
            )
            if cfg.rht.enabled:
                merged = _apply_rht(merged, cfg)
            modules = None
            if fmt == "peft":
                from evomerge.merging.apply import svd_to_lora

                fans = _fans(pool)
                modules = {k: svd_to_lora(v, cfg.merge.rank, fans.get(k, False)) for k, v in merged.items()}
            _write(fmt, cfg, pool, modules, merged, tmp, progress)
        rank = _effective_rank(modules) if fmt == "peft" else None
        manifest = _manifest(cfg, pool, method, params, weights, fmt, inputs, pool_stats, tmp, dev, rank)
        from evomerge.io import write_json_atomic

        write_json_atomic(tmp / MANIFEST, manifest)
    return out


def _check_data_is_used(cfg, method) -> None:
    """``merge.data`` given to a method without statistics would be read, checked and recorded in
    the manifest, then never used: refused, as ``--rank`` is where the output has no rank."""
    if cfg.merge.data and not method.needs:
        from evomerge.merging.registry import all_methods

        readers = sorted(name for name, m in all_methods().items() if m.needs)
        raise ConfigError(f"merge.data: merge method `{method.name}` takes no data (only {', '.join(readers)} read "
                          "task files); drop --data")


def _check_data(cfg, pool, method) -> None:
    """Before any value is read: a method with statistics has one task file per expert (or one
    shared) and the base, and every ``merge.data`` row the statistics read is checked: the file
    (as ``load_examples`` reads it) and its encoding as ``evaluate --task`` checks it (a tokenizer
    without EOS, characters outside its vocabulary, rows longer than the base's context:
    :func:`~evomerge.evaluation.encoding.encode_dataset`). The
    counts: :func:`~evomerge.experts.statistics.check_data_files`, which the statistics run too;
    data for a method that reads none was refused before (:func:`_check_data_is_used`)."""
    from evomerge.evaluation.encoding import base_context_length, encode_dataset, load_tokenizer
    from evomerge.evaluation.task_data import load_examples
    from evomerge.experts.statistics import check_data_files

    if not method.needs:
        return
    files = list(cfg.merge.data)
    check_data_files(method.needs, pool.names, files)
    for i, f in enumerate(files):
        if not Path(f).is_file():
            whose = f" (expert `{pool.names[i]}`)" if len(files) == len(pool) > 1 else ""
            what = "is a folder, not a task file" if Path(f).is_dir() else "task file not found"
            raise ConfigError(f"{f}: merge.data {what}{whose}")
    pool.require_base("data statistics")
    tok, ctx = load_tokenizer(pool.base_path), base_context_length(pool.base_path)
    for f in files:
        encode_dataset(tok, load_examples(f, limit=cfg.merge.data_samples), f"{f} (merge.data)", ctx)


def _effective_rank(modules) -> int | None:
    """The rank the written adapter has (``--rank`` capped by each matrix's size): the largest module rank."""
    return max((m.rank for m in modules.values()), default=None) if modules else None


def _fans(pool) -> dict[str, bool]:
    if pool.kind != "lora":
        return {}
    return {k: m.fan_in_fan_out for k, m in pool.adapters[0].modules.items()}


def _merge_lora_factors(cfg, pool, method, params, weights) -> dict[str, LoraModule]:
    from evomerge.merging.apply import merge_lora

    experts = [pool.lora(i) for i in range(len(pool))]
    # (merge.rank here is the truncated SVD of the RHT'd dense result, after this merge: the factors
    # themselves are merged as they are)
    return merge_lora(method, experts, weights, params, cfg.merge.space, cfg.seed)


def merged_base_name(pool) -> str | None:
    """The base a merge names (its adapter's ``base_model_name_or_path``, the manifest's): ``--base``
    resolved, which the experts were checked against; else the first base an expert names, as
    written (the zoo's adapters name none); None when nothing is known."""
    if pool.base_path is not None:
        return str(Path(pool.base_path).resolve())
    return pool.base_model_name()


def warn_renamed_base(pool) -> None:
    """A ``warning:`` on stderr when the written adapter will name ``--base`` where the experts named
    another base (e.g. a hub id): :func:`merged_base_name` replaces it, which peft then loads."""
    from evomerge.experts.adapter_checks import base_identity
    from evomerge.experts.pool import warn_stderr

    named, written = pool.base_model_name(), merged_base_name(pool)
    if pool.kind == "lora" and pool.base_path is not None and named is not None and base_identity(named) != Path(written):
        warn_stderr(f"the merged adapter's base_model_name_or_path is --base {written}, not {named!r} as the "
                    "experts' adapter_config.json name it")


def _write(fmt, cfg, pool, modules, merged, tmp: Path, progress: bool) -> None:
    from evomerge.experts.checkpoint_io import write_full_checkpoint
    from evomerge.experts.peft_io import write_peft_adapter

    if fmt == "peft":
        template = dict(pool.adapter_config(0)) if pool.kind == "lora" else {}
        named = merged_base_name(pool)
        if named is not None:
            template["base_model_name_or_path"] = named
        write_peft_adapter(modules, tmp, template)
        return
    if merged is None:  # a merged LoRA written as a full checkpoint
        merged = {k: m.delta(torch.float32) for k, m in modules.items()}
    merged = dict(merged)
    base = pool.require_base("output_format `full`")
    keys = base.keys()

    def tensor(k: str) -> torch.Tensor:
        if k in merged:  # popped: each merged tensor is freed once written
            return base.get(k, dtype=torch.float32) + merged.pop(k).to("cpu", torch.float32)
        return base.get(k)

    write_full_checkpoint(
        tmp, keys, tensor, shapes={k: base.shape(k) for k in keys}, dtypes={k: base.dtype(k) for k in keys},
        base_dir=pool.base_path, max_shard_bytes=_shard_bytes(pool), progress=progress,
    )


def _shard_bytes(pool) -> int:
    """Shard like the base checkpoint: at most its largest shard (5 GiB for a single file)."""
    files = pool.base.files()
    if len(files) <= 1:
        return 5 * 1024**3
    return max(f.stat().st_size for f in files)


def _merge_emr(cfg, pool, method, params, weights, stats, dev, progress, tmp: Path) -> None:
    from evomerge.io import save_safetensors, write_json_atomic
    from evomerge.merging.apply import merge_task_vectors

    merged = merge_task_vectors(
        method, pool.iter_stacked(device=dev), weights, params, cfg.seed, stats=stats, device=dev, progress=progress
    )
    unified = {k: v.unified.to(torch.float32) for k, v in merged.items()}
    if cfg.rht.enabled:
        unified = _apply_rht(unified, cfg)
    unified = {k: v.to("cpu").contiguous() for k, v in unified.items()}
    tasks = emr_task_names(cfg, pool)
    masks: dict[str, torch.Tensor] = {}
    rescalers: dict[str, dict[str, float]] = {t: {} for t in tasks}
    for k, v in merged.items():
        m = v.masks.to("cpu").reshape(len(pool), -1).numpy()
        for i, t in enumerate(tasks):
            masks[f"mask.{i}.{k}"] = torch.from_numpy(np.packbits(m[i]))
            rescalers[t][k] = float(v.rescalers[i])
    save_safetensors(unified, str(tmp / EMR_UNIFIED), metadata={"format": "pt"})
    save_safetensors(masks, str(tmp / EMR_MASKS), metadata={"format": "pt"})
    write_json_atomic(
        tmp / EMR_TASKS,
        {"tasks": tasks, "shapes": {k: list(v.shape) for k, v in unified.items()}, "rescalers": rescalers,
         "layout": "task i, tensor k: rescalers[task][k] * unpack(mask.i.k) * unified[k]"},
    )


def emr_task_names(cfg, pool) -> list[str]:
    names = [s.task or n for s, n in zip(cfg.experts.experts, pool.names)]
    if len(set(names)) != len(names):
        raise ConfigError(f"EMR needs one distinct task per expert; got tasks {names}")
    return names


def load_emr_task(out_dir: str | Path, task: str | int) -> TensorDict:
    """The task vector EMR serves for ``task`` (name or index): ``rescaler * mask * unified`` per tensor."""
    from safetensors import safe_open

    out_dir = Path(out_dir)
    meta_path = out_dir / EMR_TASKS
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise ExpertLoadError(f"{meta_path}: not found (is {out_dir} an EMR merge output?)") from None
    tasks = meta["tasks"]
    if isinstance(task, int):
        if not 0 <= task < len(tasks):
            raise ConfigError(f"EMR task index {task} out of range (0..{len(tasks) - 1})")
        i = task
    elif task in tasks:
        i = tasks.index(task)
    else:
        raise ConfigError(f"{meta_path}: no task {task!r}; tasks: {tasks}")
    name = tasks[i]
    out: TensorDict = {}
    with safe_open(str(out_dir / EMR_UNIFIED), framework="pt") as fu, safe_open(str(out_dir / EMR_MASKS), framework="pt") as fm:
        for k, shape in meta["shapes"].items():
            u = fu.get_tensor(k)
            numel = u.numel()
            bits = np.unpackbits(fm.get_tensor(f"mask.{i}.{k}").numpy(), count=numel).astype(bool)
            mask = torch.from_numpy(bits).reshape(shape)
            out[k] = u * mask.to(u.dtype) * meta["rescalers"][name][k]
    return out


def _input_hashes(cfg, pool) -> dict[str, Any]:
    from evomerge.io import sha256_tree

    experts = []
    for spec, name, path in zip(cfg.experts.experts, pool.names, pool.paths):
        experts.append({"name": name, "task": spec.task, "path": str(path.resolve()),
                        "sha256": sha256_tree(path, recursive=False)})
    base = None
    if pool.base_path is not None:
        base = {"path": str(pool.base_path.resolve()), "sha256": sha256_tree(pool.base_path, recursive=False)}
    data = [{"path": str(Path(f).resolve()), "sha256": sha256_tree(f)} for f in cfg.merge.data]
    return {"base": base, "experts": experts, "data": data}


def _manifest(cfg, pool, method, params, weights, fmt, inputs, pool_stats, tmp: Path, dev, rank) -> dict[str, Any]:
    import evomerge

    return {
        "evomerge_version": evomerge.__version__,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "method": method.name,
        "params": params,
        "space": cfg.merge.space,
        "rank": rank,  # the written adapter's rank (--rank capped by each matrix's size); None: no adapter
        "rank_requested": cfg.merge.rank,
        "data_samples": cfg.merge.data_samples if method.needs else None,  # rows of merge.data the statistics read
        "seed": cfg.seed,
        "weights": None if weights is None else [float(x) for x in weights],
        "rht": cfg.rht.model_dump(mode="json"),
        "output_format": fmt,
        "expert_kind": pool.kind,
        "base_model_name_or_path": merged_base_name(pool),
        "device": str(dev),
        "inputs": inputs,
        "pool_stats": pool_stats,
        "files": sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file()),
    }
