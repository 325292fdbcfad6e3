"""One unit of scale work: merge the cell's experts, optionally apply RHT, evaluate.

:class:`CellWorker` is a plain class (the Ray actor in :mod:`evomerge.pipelines.scale.execute` wraps it),
so a worker holds the pool and the evaluator once and serves many cells.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from evomerge.config.sections import EvaluationConfig, RHTConfig
from evomerge.evaluation.evaluator import REPORTED_SPLITS
from evomerge.experts.types import TensorDict
from evomerge.merging.types import PerTaskMerge, derive_seed
from evomerge.pipelines.inputs import TASK_SPLITS as SPLITS, load_user_tasks
from evomerge.pipelines.scale.plan import Cell

#: The splits a scale cell scores on every row (test: only reported, never chosen on)
WHOLE_SPLITS = REPORTED_SPLITS


@dataclass(frozen=True)
class ScaleContext:
    """What a worker needs to rebuild the pool and the evaluator (small and picklable)."""

    expert_paths: tuple[str, ...]
    names: tuple[str, ...]
    expert_tasks: tuple[str | None, ...]  # the task each expert was trained for
    base_dir: str | None
    zoo_root: str | None  # evaluate on the zoo's tasks when set
    evaluation: EvaluationConfig
    rht: RHTConfig
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    device: str = "cpu"
    hist_samples: int = 4096
    threads: int = 1
    allow_bin: bool = False
    run_dir: str | None = None  # where search cells find their best result
    population_test: bool = False  # also score a search's final population on test (flagged)


@dataclass
class CellOutput:
    rows: list[dict[str, Any]]
    sample: list[dict[str, Any]]
    evaluations: int
    seconds: float
    population_test: dict[str, float] | None = None  # search cells: test fitness per final individual
    examples: Any = None  # pyarrow Table in store.EXAMPLE_SCHEMA: the per-example values of ``rows``


def weight_sample(td: TensorDict, n: int, seed: int) -> list[float]:
    """About ``n`` entries drawn uniformly from all tensors of ``td`` (per tensor, in proportion
    to its size, so the whole vector is never concatenated)."""
    total = sum(t.numel() for t in td.values())
    if n <= 0 or total == 0:
        return []
    g = torch.Generator().manual_seed(seed)
    out: list[torch.Tensor] = []
    for key in sorted(td):
        t = td[key].reshape(-1)
        m = int(round(n * t.numel() / total))
        if m:
            out.append(t[torch.randint(t.numel(), (m,), generator=g)].float())
    return torch.cat(out).tolist() if out else []


class CellWorker:
    """Holds the expert pool and the evaluator; computes cells."""

    def __init__(self, ctx: ScaleContext):
        from evomerge.experts import load_pool

        torch.set_num_threads(max(1, ctx.threads))
        self.ctx = ctx
        self.pool = load_pool(list(ctx.expert_paths), ctx.base_dir, allow_bin=ctx.allow_bin, names=list(ctx.names))
        self.evaluator = make_evaluator(ctx)
        self.tasks: list[str] = list(self.evaluator.tasks)
        self.splits = [sp for sp in SPLITS if all(sp in self.evaluator.data[t] for t in self.tasks)]

    # --- candidates ---------------------------------------------------------------------------
    def merged(
        self, method_name: str, subset: tuple[int, ...], seed: int, device: str | torch.device | None = None
    ) -> TensorDict | dict[str, PerTaskMerge]:
        """The merged task vector of ``subset`` (LoRA experts are merged as products B@A), densified
        and merged on ``device`` (default: the evaluator's, so a GPU actor merges on its GPU)."""
        from evomerge.merging.apply import merge_task_vectors
        from evomerge.merging.registry import get_merge_method

        method = get_merge_method(method_name)
        params = method.resolve(self.ctx.method_params.get(method_name, {}))
        idx = list(subset)
        dev = self.evaluator.device if device is None else torch.device(device)
        stream = ((key, self.pool.stacked(key, device=dev)[idx]) for key in self.pool.keys())
        stats = None
        if method.needs:  # Fisher / RegMean: the run's cached per-expert statistics
            from evomerge.pipelines.scale.statistics import load_stacked

            stats = load_stacked(self.ctx.run_dir or ".", self.ctx.names, idx)
        return merge_task_vectors(method, stream, None, params, seed, stats=stats, device=dev)

    def expert_vector(self, i: int) -> TensorDict:
        return self.pool.task_vector(i)

    def candidate(self, merged: Any, subset: tuple[int, ...], rht: bool, seed: int) -> tuple[Any, TensorDict]:
        """(what the evaluator scores, the single vector whose entries feed the histograms).

        A per-task merge (EMR) serves each merged expert's task with that expert's masked,
        rescaled vector and every other task with the unified vector.
        """
        from evomerge.evaluation import PerTask

        per_task = bool(merged) and isinstance(next(iter(merged.values())), PerTaskMerge)
        if not per_task:
            td = self._rht(merged, rht, seed)
            return td, td
        merged = self._rht(merged, rht, seed)  # RHT on the unified vector, masks and rescalers kept (as merge)
        unified = {k: m.merged() for k, m in merged.items()}
        by_task: dict[str, TensorDict] = {}
        for j, i in enumerate(subset):
            task = self.ctx.expert_tasks[i]
            if task is not None and task in self.tasks:
                by_task[task] = {k: m.task_delta(j) for k, m in merged.items()}
        for task in self.tasks:
            by_task.setdefault(task, unified)
        return PerTask(by_task), unified

    def _rht(self, td: TensorDict, rht: bool, seed: int) -> TensorDict:
        if not rht:
            return td
        from evomerge.merging.rht import apply_rht
        from evomerge.seeding import rht_seed

        # the config's noise (replicate 0 = what merge and evolve draw); each cell seed a replicate
        return apply_rht(td, self.ctx.rht.model_copy(update={"enabled": True}), rht_seed(self.ctx.rht.seed, seed))

    # --- one cell -----------------------------------------------------------------------------
    def run(self, cell: Cell) -> CellOutput:
        t0 = time.perf_counter()
        if cell.kind == "base":
            cand, vec = {}, {}
        elif cell.kind == "expert":
            vec = self.expert_vector(cell.experts[0])
            cand = vec
        elif cell.kind in ("merge", "pair"):
            cand, vec = self.candidate(self.merged(cell.method, cell.experts, cell.seed), cell.experts, cell.rht, cell.seed)
        elif cell.kind == "search":
            return self.run_search_result(cell, t0)
        else:
            raise ValueError(f"CellWorker cannot run {cell.kind} cells")
        scores, examples = self.score(cand, cell, cell.rht)
        seconds = time.perf_counter() - t0
        rows = self.rows(cell, cell.rht, scores, seconds)
        sample = self.sample_rows(cell, cell.rht, vec)
        return CellOutput(rows, sample, evaluations=len(self.splits), seconds=seconds, examples=examples_table(examples))

    def run_search_result(self, cell: Cell, t0: float) -> CellOutput:
        """Score a finished search's best result, plain and (``cell.rht``) with RHT."""
        from pathlib import Path

        from evomerge.errors import EvomergeError
        from evomerge.pipelines.scale.search_cells import best_path

        path = best_path(Path(self.ctx.run_dir or "."), cell)
        if path is None:
            raise EvomergeError(f"scale cell {cell.id}: its search has no best result yet")
        td = load_best(path)
        rows, sample, examples, n = [], [], [], 0
        for rht in (False, True) if cell.rht else (False,):
            cand = self._rht(td, rht, cell.seed)
            scores, ex = self.score(cand, cell, rht)
            examples += ex
            n += len(self.splits)
            rows += self.rows(cell, rht, scores, 0.0)
            sample += self.sample_rows(cell, rht, cand)
        pop = None
        if self.ctx.population_test and "test" in self.splits:
            pop = self.population_test(cell)
            n += len(pop)
        seconds = time.perf_counter() - t0
        for r in rows:
            r["seconds"] = seconds
        return CellOutput(rows, sample, evaluations=n, seconds=seconds, population_test=pop,
                          examples=examples_table(examples))

    def population_test(self, cell: Cell) -> dict[str, float]:
        """Test fitness (mean over the k experts' tasks, the search's objective tasks) of every
        individual of the search's final population: the paper's test-set selection, reported only."""
        from pathlib import Path

        from evomerge.pipelines.scale.search_cells import final_population

        tasks = [t for t in dict.fromkeys(self.ctx.expert_tasks[i] for i in cell.experts) if t in self.tasks] or self.tasks
        out = {}
        for ident, cand in final_population(Path(self.ctx.run_dir or "."), cell).items():
            per_task = self.evaluate(cand, "test")
            out[ident] = sum(per_task[t][0] for t in tasks) / len(tasks)
        return out

    def evaluate(self, candidate: Any, split: str) -> dict[str, tuple[float, float]]:
        """``{task: (metric, cross-entropy)}`` (the online rule is also judged on cross-entropy)."""
        return _per_task(self.evaluator.evaluate(candidate, split=split))

    def score(self, candidate: Any, cell: Cell, rht: bool) -> tuple[dict[str, dict[str, tuple[float, float]]], list[dict]]:
        """:meth:`evaluate` on every split, and the per-example values whose means those are:
        one column block per (split, task) (``cell``, ``task``, ``split``, ``rht``, ``row``,
        ``score``, ``cross_entropy``; rows in the split's order), for :func:`examples_table`."""
        import numpy as np

        scores, blocks = {}, []
        for split in self.splits:
            res = self.evaluator.evaluate_many([candidate], split=split, per_example=True)[0]
            scores[split] = _per_task(res)
            for task in sorted(res.per_task):
                ex = res.extra["examples"][task]
                n = len(ex["cross_entropy"])
                blocks.append({"cell": [cell.id] * n, "task": [task] * n, "split": [split] * n, "rht": [rht] * n,
                               "row": np.arange(n, dtype=np.int32), "score": ex[self.evaluator.metric],
                               "cross_entropy": ex["cross_entropy"]})
        return scores, blocks

    def rows(self, cell: Cell, rht: bool, scores: dict[str, dict[str, tuple[float, float]]], seconds: float) -> list[dict[str, Any]]:
        subset_tasks = {self.ctx.expert_tasks[i] for i in cell.experts}
        experts = ",".join(self.ctx.names[i] for i in cell.experts)
        method = cell.method
        return [
            {
                "cell": cell.id, "kind": cell.kind, "k": cell.k, "method": method, "rht": rht, "seed": seed,
                "experts": experts, "task": task, "in_subset": task in subset_tasks, "split": split,
                "score": score if math.isfinite(score) else float("nan"), "seconds": seconds,
                "cross_entropy": ce if math.isfinite(ce) else float("nan"),
            }
            for seed in cell.seeds
            for split, per_task in scores.items()
            for task, (score, ce) in sorted(per_task.items())
        ]

    def sample_rows(self, cell: Cell, rht: bool, vec: TensorDict) -> list[dict[str, Any]]:
        if cell.kind not in ("merge", "search"):  # pair cells: no histograms
            return []
        values = weight_sample(vec, self.ctx.hist_samples, derive_seed(cell.seed, cell.id, salt="hist") % (2**31))
        return [
            {"cell": cell.id, "k": cell.k, "method": cell.method, "rht": rht, "seed": seed, "value": v}
            for seed in cell.seeds[:1]
            for v in values
        ]


def _per_task(res) -> dict[str, tuple[float, float]]:
    metrics = res.extra.get("metrics", {})
    return {t: (float(v), float(metrics.get(t, {}).get("cross_entropy", float("nan")))) for t, v in res.per_task.items()}


def examples_table(blocks: list[dict]):
    """The column blocks of :meth:`CellWorker.score` as one table in the store's example schema."""
    import pyarrow as pa

    from evomerge.pipelines.scale.store import EXAMPLE_SCHEMA

    if not blocks:
        return EXAMPLE_SCHEMA.empty_table()
    return pa.concat_tables([pa.Table.from_pydict(b, schema=EXAMPLE_SCHEMA) for b in blocks])


def load_best(path) -> TensorDict:
    """A search's best result as a task vector: a peft adapter folder or ``task_vector.safetensors``."""
    from evomerge.experts.types import lora_deltas

    if (path / "adapter_config.json").is_file():
        from evomerge.experts.peft_io import load_peft_adapter

        return lora_deltas(load_peft_adapter(path).modules, torch.float32)
    from safetensors.torch import load_file

    return load_file(str(path / "task_vector.safetensors"))


def make_evaluator(ctx: ScaleContext):
    """The evaluator over the zoo's tasks (or the user's task files).

    Validation (every choice of the run: the experts' gains, the searches' objective, the stop
    rules' curves) keeps the first ``evaluation.max_samples`` rows of each task; test, which is
    only reported, is scored on every row of the split."""
    from evomerge.evaluation import Evaluator

    ev = ctx.evaluation
    kwargs = dict(metric=ev.metric, device=ctx.device, batch_size=ev.batch_size, max_samples=ev.max_samples,
                  max_rows=ev.rows_per_pass, whole_splits=WHOLE_SPLITS)
    if ctx.zoo_root is not None:
        from evomerge.zoo import Zoo

        return Evaluator.from_zoo(Zoo.open(ctx.zoo_root), tasks=ev.tasks, **kwargs)
    return Evaluator(ctx.base_dir, load_user_tasks(ev.task_files), task_weights=ev.task_weights, **kwargs)
