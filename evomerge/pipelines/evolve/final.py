"""The end of a run: RHT on the result if configured, test-split scores (reported, never used
for choosing), the GENOME top-k ensemble, and the best individual written as a peft adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evomerge.config import EvomergeConfig
from evomerge.distributed.actors import numpy_to_td
from evomerge.pipelines.inputs import EvolveInputs


def finalize(cfg: EvomergeConfig, inputs: EvolveInputs, search: Any, rt: Any, out_dir: Path,
             write_adapter: bool = True) -> dict[str, Any]:
    best_id = search.best_id
    weights = {best_id: rt.pool.snapshot[best_id]}
    rht = cfg.rht if cfg.rht.enabled else None  # per candidate or final: the result is RHT'd
    val = rt.evaluate_weights(weights, "validation", rht)[0]
    splits = _splits(inputs)
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
    adapter_dir = None
    if write_adapter:
        adapter_dir = _write_best(inputs, weights[best_id], rht, best_id, out_dir)
    return {
        "val_per_task": val.per_task,
        "val_fitness": val.fitness,
        "test_per_task": test.per_task if test else {},
        "test_fitness": test.fitness if test else None,
        "ensemble": ensemble,
        "adapter_dir": adapter_dir,
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


def _write_best(inputs: EvolveInputs, weights: dict, rht: Any, best_id: str, out_dir: Path) -> Path:
    """The best individual as a peft adapter (LoRA pools) or a task-vector file (full pools)."""
    from evomerge.seeding import rht_seed

    td = numpy_to_td(weights)
    if rht is not None:
        from evomerge.merging.rht import apply_rht

        td = apply_rht(td, rht, rht_seed(rht.seed), fan_in_fan_out=inputs.fan_in_fan_out)
    if inputs.kind == "lora" and any(k.endswith("::A") for k in td):  # rht.domain delta gives a task vector
        from evomerge.experts.peft_io import save_peft_adapter
        from evomerge.experts.types import ab_to_lora

        template = dict(inputs.adapter_template)
        return save_peft_adapter(ab_to_lora(td, inputs.fan_in_fan_out), out_dir / "best_adapter", template,
                                 overwrite=True)
    from safetensors.torch import save_file

    from evomerge.io import atomic_dir

    path = out_dir / "best_task_vector"
    with atomic_dir(path, overwrite=True) as tmp:
        save_file({k: v.contiguous() for k, v in td.items()}, str(tmp / "task_vector.safetensors"))
    return path
