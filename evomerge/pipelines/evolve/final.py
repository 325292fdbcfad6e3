"""The end of a run: RHT on the result if configured, test-split scores (reported, never used
for choosing, on every test row: :data:`~evomerge.evaluation.evaluator.REPORTED_SPLITS`), the
GENOME top-k ensemble, and the best individual written to disk: a peft adapter for LoRA pools, a
task vector for full fine-tunes (and for LoRA results that are dense)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from evomerge.config import EvomergeConfig
from evomerge.distributed.actors import numpy_to_td
from evomerge.pipelines.inputs import EvolveInputs


def finalize(cfg: EvomergeConfig, inputs: EvolveInputs, search: Any, rt: Any, out_dir: Path,
             write_adapter: bool = True, svd_adapter: bool = True, report_test: bool = True) -> dict[str, Any]:
    best_id = search.best_id
    weights = {best_id: rt.pool.snapshot[best_id]}
    rht = cfg.rht if cfg.rht.enabled else None  # per candidate or final: the result is RHT'd
    val = rt.evaluate_weights(weights, "validation", rht)[0]
    splits = _splits(inputs) if report_test else ["validation"]
    test = rt.evaluate_weights(weights, "test", rht)[0] if "test" in splits else None
    ensemble = None
    if hasattr(search, "ensemble_ids"):
        ids = search.ensemble_ids(cfg.genome.ensemble_k)
        scores = rt.ensemble(ids, splits)
        ensemble = {"ids": ids, "available": all(v is not None for v in scores.values()), **scores}
        if ensemble["available"]:
            ensemble["by_k"] = _ensemble_by_k(ids, scores)
            ensemble["metric"] = scores["validation"].get("scored_by")
            for split in scores:
                ensemble[split] = {"per_task": scores[split]["per_task"], "fitness": scores[split]["fitness"]}
    written = {"adapter_dir": None, "task_vector_dir": None, "adapter_svd": None}
    if write_adapter:
        written = write_best(inputs, weights[best_id], rht, out_dir, svd_adapter)
    if written["adapter_svd"] is not None:  # the adapter as a user loads it, scored like the result (reported only)
        written["adapter_svd"]["val_fitness"] = _adapter_fitness(rt, written["adapter_dir"], best_id)
    return {
        "val_per_task": val.per_task,
        "val_fitness": val.fitness,
        "test_per_task": test.per_task if test else {},
        "test_fitness": test.fitness if test else None,
        "ensemble": ensemble,
        **written,
    }


def _ensemble_by_k(ids: list[str], scores: dict[str, Any]) -> list[dict[str, Any]]:
    """Top-k majority-vote ensembles for k = 2..len(ids) (just k = 1 if one id): ids and
    per-split ``{per_task, fitness}`` (ranked by validation; test is reported only)."""
    ks = range(2, len(ids) + 1) if len(ids) > 1 else [1]
    out = []
    for k in ks:
        row: dict[str, Any] = {"k": k, "ids": list(ids[:k])}
        for split, s in scores.items():
            row[split] = (s.get("by_k") or {}).get(k)
        out.append(row)
    return out


def _splits(inputs: EvolveInputs) -> list[str]:
    spec = inputs.evaluator
    if spec.zoo_root is not None:
        return ["validation", "test"]
    has_test = all(Path(p).is_dir() and any(Path(p).glob("test.*")) for p in spec.task_files.values())
    return ["validation", "test"] if has_test else ["validation"]


def write_best(inputs: EvolveInputs, weights: dict, rht: Any, out_dir: Path, svd_adapter: bool = True) -> dict[str, Any]:
    """Write the best individual; returns ``adapter_dir``, ``task_vector_dir``, ``adapter_svd``.

    * LoRA result in factor space (``space: ab``, RHT off or on the factors): ``best_adapter/``.
    * Dense LoRA result (``space: delta``, or RHT on the deltas): ``best_task_vector/`` (the exact
      result) and ``best_adapter/``, the truncated SVD ``evomerge merge --rank`` writes, at the
      sum of the experts' ranks per module: exact for a linear combination of the experts, a
      best rank-r approximation otherwise (``adapter_svd`` holds its relative error); without
      ``svd_adapter``, ``best_task_vector/`` alone.
    * Full fine-tunes: ``best_task_vector/``.
    """
    from evomerge.experts.types import ab_to_lora
    from evomerge.merging.rht import has_factors
    from evomerge.seeding import rht_seed

    td = numpy_to_td(weights)
    if rht is not None:
        from evomerge.merging.rht import apply_rht

        td = apply_rht(td, rht, rht_seed(rht.seed), fan_in_fan_out=inputs.fan_in_fan_out)
    if inputs.kind == "lora" and has_factors(td):  # rht.domain delta turns the factors dense
        adapter = _save_adapter(ab_to_lora(td, inputs.fan_in_fan_out), inputs, out_dir)
        return {"adapter_dir": adapter, "task_vector_dir": None, "adapter_svd": None}
    task_vector = _save_task_vector(td, out_dir / "best_task_vector")
    if not inputs.lora_ranks or not svd_adapter:  # full fine-tunes, or the dense result alone
        return {"adapter_dir": None, "task_vector_dir": task_vector, "adapter_svd": None}
    from evomerge.merging.apply import svd_to_lora

    modules = {k: svd_to_lora(v, inputs.lora_ranks[k], inputs.fan_in_fan_out.get(k, False)) for k, v in td.items()}
    adapter = _save_adapter(modules, inputs, out_dir)
    return {"adapter_dir": adapter, "task_vector_dir": task_vector, "adapter_svd": _svd_error(td, modules)}


def _svd_error(dense: dict, modules: dict) -> dict[str, Any]:
    """How far the adapter ``modules`` is from the dense result: its ranks and the relative
    Frobenius error over all modules (and the worst module's), in float64."""
    num = den = worst = 0.0
    for k, v in dense.items():
        ref = v.to(torch.float64)
        err, norm = float((modules[k].delta(torch.float64) - ref).pow(2).sum()), float(ref.pow(2).sum())
        num, den = num + err, den + norm
        worst = max(worst, (err / norm) ** 0.5 if norm > 0 else 0.0)
    return {"ranks": sorted({m.rank for m in modules.values()}),
            "relative_error": (num / den) ** 0.5 if den > 0 else 0.0, "max_module_relative_error": worst}


def _save_adapter(modules: dict, inputs: EvolveInputs, out_dir: Path) -> Path:
    from evomerge.experts.peft_io import save_peft_adapter

    return save_peft_adapter(modules, out_dir / "best_adapter", dict(inputs.adapter_template), overwrite=True)


def _save_task_vector(td: dict, path: Path) -> Path:
    from safetensors.torch import save_file

    from evomerge.io import atomic_dir

    with atomic_dir(path, overwrite=True) as tmp:
        save_file({k: v.contiguous() for k, v in td.items()}, str(tmp / "task_vector.safetensors"))
    return path


def _adapter_fitness(rt: Any, adapter_dir: Path, best_id: str) -> float:
    """Validation fitness of the written adapter, read back from disk."""
    from evomerge.distributed.actors import td_to_numpy
    from evomerge.experts.peft_io import load_peft_adapter
    from evomerge.experts.types import lora_to_ab

    ab = td_to_numpy(lora_to_ab(load_peft_adapter(adapter_dir).modules))
    return rt.evaluate_weights({best_id: ab}, "validation")[0].fitness
