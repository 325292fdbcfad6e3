"""The scale run's plan (``plan.json``): each expert's own-task gain, the pool's variances and
correlations, the expert orders, the stop rules' inputs and every cell."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from evomerge.config import EvomergeConfig
from evomerge.pipelines.scale.plan import build_cells, stop_rule

if TYPE_CHECKING:
    from evomerge.pipelines.scale.driver import PoolSpec
    from evomerge.pipelines.scale.work import ScaleContext


def expert_gains(cfg: EvomergeConfig, spec: PoolSpec, run_dir: Path, ctx: ScaleContext | None = None) -> dict[str, Any]:
    """Each expert alone and the base on validation (measured once per run, ``expert_gains.json``)."""
    from evomerge.pipelines.scale.driver import make_context
    from evomerge.pipelines.scale.gains import load_or_measure
    from evomerge.pipelines.scale.work import CellWorker

    ctx = ctx or make_context(cfg, spec, run_dir)
    return load_or_measure(run_dir, lambda: CellWorker(ctx), spec.names, spec.tasks)


def make_plan(cfg: EvomergeConfig, spec: PoolSpec, run_dir: Path | None = None, ctx: ScaleContext | None = None) -> dict[str, Any]:
    """Per-expert variances and the correlation matrix of the pool, each expert's own-task gain,
    the expert orders, the stop rules' inputs and every cell, as JSON-able data (``plan.json``)."""
    from evomerge.experts import load_pool
    from evomerge.merging.registry import get_merge_method
    from evomerge.pipelines.scale.ordering import order_experts
    from evomerge.theory import gram_of, sigma_rho_from_gram

    pool = load_pool(spec.paths, spec.base_dir, allow_bin=cfg.experts.allow_bin, names=spec.names)
    acc = gram_of(pool.stacked(k) for k in pool.keys())
    sigma2, rho, corr = sigma_rho_from_gram(acc)
    variances = acc.variances()
    n = len(pool)
    s = cfg.scale
    gains = None
    if run_dir is not None:
        measured = expert_gains(cfg, spec, run_dir, ctx)
        gains = [measured["gain"][name] for name in spec.names]
    elif s.order in ("gain", "low_correlation"):
        from evomerge.errors import ConfigError

        raise ConfigError(f"scale.order `{s.order}` needs the experts' own-task gains (measured in a run directory)")
    orders = {seed: order_experts(n, s.order, seed=seed, corr=corr, gains=gains) for seed in s.seeds}
    rule = stop_rule(variances, corr, orders[s.seeds[0]], s, sigma2=sigma2, rho=rho)
    random_methods = frozenset(m for m in s.methods if get_merge_method(m).random)
    from evomerge.pipelines.scale.pairs import correlated_pairs

    pairs = correlated_pairs(spec.names, spec.domains, spec.related) if s.pairs else {"related": [], "unrelated": [], "note": "scale.pairs is off"}
    cells = build_cells(s, orders, rule.k_end, random_methods=random_methods, order_random=s.order == "random",
                        search_k=rule.search_k, pairs=[tuple(p) for p in pairs["related"] + pairs["unrelated"]])
    eval_tasks = list(cfg.evaluation.tasks or (spec.names if spec.zoo_root is not None else cfg.evaluation.task_files))
    return {
        "experts": spec.names,
        "expert_tasks": spec.tasks,
        "tasks": eval_tasks,
        "zoo_profile": spec.zoo_profile if spec.zoo_root is not None else None,
        "kind": pool.kind,
        "variances": variances.tolist(),
        "correlation": corr.tolist(),
        "gains": gains,
        "orders": {str(seed): [spec.names[i] for i in o] for seed, o in orders.items()},
        "stop": rule.to_dict(),
        "pairs": pairs,
        "cells": [
            {"kind": c.kind, "k": c.k, "method": c.method, "rht": c.rht, "seed": c.seed,
             "seeds": list(c.seeds), "experts": list(c.experts)}
            for c in cells
        ],
    }
