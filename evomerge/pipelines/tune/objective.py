"""Trial objectives: score one configuration by the validation fitness of its merge.

The pool and the evaluator are loaded once per worker process (by the scale driver's
:class:`~evomerge.pipelines.scale.work.CellWorker`, so a trial merges exactly as ``evomerge scale`` does)
and reused by every trial. Test scores are stored on the trial as user attributes and never
returned to Optuna; like every reported test score (evolve's, a genome/swarm trial's, scale's) they
are over every test row (:data:`~evomerge.evaluation.evaluator.REPORTED_SPLITS`: the worker's
evaluator scores test whole), while validation, the objective, keeps ``evaluation.max_samples`` rows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from evomerge.config import EvomergeConfig


@dataclass(frozen=True)
class Score:
    validation: float
    validation_per_task: dict[str, float]
    test: float
    test_per_task: dict[str, float]


class MergeScorer:
    """Merges a subset of the pool under a config and evaluates it (validation and test)."""

    def __init__(self, cfg: EvomergeConfig, spec) -> None:
        from evomerge.pipelines.scale.work import CellWorker, ScaleContext

        self.spec = spec
        ctx = ScaleContext(
            expert_paths=tuple(str(p) for p in spec.paths),
            names=tuple(spec.names),
            expert_tasks=tuple(spec.tasks),
            base_dir=None if spec.base_dir is None else str(spec.base_dir),
            zoo_root=None if spec.zoo_root is None else str(spec.zoo_root),
            evaluation=cfg.evaluation,
            rht=cfg.rht,
            device=cfg.device,
            allow_bin=cfg.experts.allow_bin,
        )
        self.worker = CellWorker(ctx)

    @property
    def n_experts(self) -> int:
        return len(self.spec.paths)

    def score(self, cfg: EvomergeConfig, k: int | None = None) -> Score:
        subset = tuple(range(k if k is not None else self.n_experts))
        # The worker reads the method's parameters and the RHT settings from its context.
        self.worker.ctx = dataclasses.replace(
            self.worker.ctx, method_params={cfg.merge.method: dict(cfg.merge.params)}, rht=cfg.rht
        )
        merged = self.worker.merged(cfg.merge.method, subset, cfg.seed)
        candidate, _ = self.worker.candidate(merged, subset, cfg.rht.enabled, cfg.seed)
        val = self.worker.evaluator.evaluate(candidate, split="validation")
        test = self.worker.evaluator.evaluate(candidate, split="test")
        return Score(
            float(val.fitness), {t: float(v) for t, v in val.per_task.items()},
            float(test.fitness), {t: float(v) for t, v in test.per_task.items()},
        )


def record_score(trial, score: Score) -> None:
    trial.set_user_attr("validation_per_task", score.validation_per_task)
    trial.set_user_attr("test_fitness", score.test)
    trial.set_user_attr("test_per_task", score.test_per_task)


def merge_objective(base: EvomergeConfig, dims, scorer: MergeScorer) -> Callable[[Any], float]:
    """``trial -> validation fitness`` of the merge under the sampled overrides."""
    from evomerge.pipelines.tune.space import apply_overrides, expert_count, suggest

    def objective(trial) -> float:
        values = suggest(trial, dims)
        cfg = apply_overrides(base, values)
        score = scorer.score(cfg, expert_count(values))
        record_score(trial, score)
        return score.validation

    return objective
