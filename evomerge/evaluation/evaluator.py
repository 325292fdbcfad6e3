"""Fitness evaluation: score candidates on task splits with weights swapped in memory."""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from evomerge.devices import resolve_device
from evomerge.errors import ConfigError, DataError, ExpertLoadError, cause_text
from evomerge.evaluation import metrics as M
from evomerge.evaluation.candidates import Candidate, PerTask, to_deltas
from evomerge.evaluation.encoding import Encoded, context_length, encode_dataset, pad_id, pool, scored_rows, task_source
from evomerge.evaluation.forward import applied, linear_weights
from evomerge.evaluation.generate import greedy_generate
from evomerge.evaluation.head import hidden_out, output_head, scores_by_rows, touches
from evomerge.evaluation.pages import keep_freed_pages


#: Splits that are only reported, never used to choose (a search's fitness, a study's objective, a
#: stop rule read validation): a returned model's score on them is over every row of the split,
#: whatever ``evaluation.max_samples`` (the budget of the rows the choices read), so that evolve,
#: tune (every objective) and scale report one test score, the one ``evomerge evaluate --split test``
#: gives with ``--max-samples`` at the split's size. The evaluators that report them are built with
#: ``whole_splits=REPORTED_SPLITS``.
REPORTED_SPLITS: tuple[str, ...] = ("test",)


@dataclass
class EvalResult:
    """Scores of one candidate on one split.

    ``per_task[t]`` is the chosen metric on task ``t``; ``fitness`` their weighted mean.
    ``extra["metrics"][t]`` holds every computed metric (``cross_entropy`` in nats/token).
    With ``evaluate_many(..., per_example=True)``, ``extra["examples"][t][metric]`` is a float64
    array of that metric on each example of task ``t``, in the split's row order (element ``i``
    is row ``i`` of the split as given): ``per_task[t]`` and ``extra["metrics"][t]`` are the
    means of these arrays (task weights act only on ``fitness`` and ``extra["mean"]``).
    """

    per_task: dict[str, float]
    fitness: float
    extra: dict[str, Any] = field(default_factory=dict)


def check_base_dir(base_dir: Path) -> None:
    """Refuse a base that is a file, or a folder without ``config.json``, naming it (no weights read)."""
    if base_dir.exists() and not base_dir.is_dir():
        raise ExpertLoadError(f"{base_dir}: is a file, not a folder; the base model is a folder (config.json, weights, tokenizer)")
    if not (base_dir / "config.json").is_file():
        raise ExpertLoadError(f"{base_dir}: base model folder has no config.json")


def _load_base(base_dir: Path, device: torch.device, dtype: torch.dtype | None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_base_dir(base_dir)
    try:
        tok = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
        # default: the checkpoint's own dtype on CUDA (a bf16 base stays bf16, as transformers 5
        # and the peft loop load it: half the memory, tensor-core matmuls); fp32 on the CPU,
        # where bf16 matmuls are slow on many machines (benchmarks/model_scale.py)
        auto = "auto" if device.type == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype or auto, local_files_only=True)
    except Exception as err:  # OSError, ValueError, safetensors' own error for a truncated file, ...
        raise ExpertLoadError(f"{base_dir}: cannot load base model/tokenizer ({cause_text(err)})") from None
    model.to(device).eval().requires_grad_(False)
    return model, tok


class Evaluator:
    """Scores candidates (task vectors, LoRA experts, ``PerTask``) on prompt/answer tasks.

    The base model stays loaded; a candidate's deltas are applied on the fly (see
    :mod:`evomerge.evaluation.forward`), so nothing is saved or reloaded per candidate.
    ``tasks`` maps task name to ``{split: datasets.Dataset}`` with prompt/answer columns.
    Each split keeps its first ``max_samples`` rows, except the ``whole_splits``, which keep
    every row (e.g. a test split that is only reported, while validation drives the choices).
    """

    def __init__(
        self,
        base_dir: str | Path,
        tasks: Mapping[str, Mapping[str, Any]],
        metric: str = "token_accuracy",
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        max_samples: int | None = 200,
        *,
        task_weights: Mapping[str, float] | None = None,
        text_metrics: bool | None = None,
        max_new_tokens: int | None = None,
        dtype: torch.dtype | None = None,
        max_rows: int | None = None,
        whole_splits: Sequence[str] = (),
    ) -> None:
        if metric not in M.METRICS:
            raise ConfigError(f"evaluation: `metric` must be one of {list(M.METRICS)}. Got {metric!r} instead.")
        if batch_size < 1:
            raise ConfigError(f"evaluation: `batch_size` must be >= 1. Got {batch_size!r} instead.")
        if not tasks:
            raise DataError("evaluation: no tasks given")
        self.metric = metric
        keep_freed_pages()  # the batches' activation pages stay mapped for the next batch (pages.py)
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        if max_rows is None:
            # Several candidates per forward pass (``forward.stacked_weights``) pay off where a
            # pass is launch-bound (GPU); on CPU the small model is already compute-bound and
            # the larger activations run slower (measured: benchmarks/eval_throughput.py).
            max_rows = 4096 if self.device.type == "cuda" else self.batch_size
        self.max_rows = max(int(max_rows), self.batch_size)
        self.text_metrics = metric in M.TEXT_METRICS if text_metrics is None else bool(text_metrics)
        self.base_dir = Path(base_dir)
        self.model, self.tokenizer = _load_base(self.base_dir, self.device, dtype)
        self.params = {k: p for k, p in self.model.named_parameters(remove_duplicate=False)}
        # scores over the vocabulary model and tokenizer share: a model may carry more output
        # rows (embeddings padded to a multiple) than there are tokens (as greedy_generate does)
        self.vocab = len(self.tokenizer)
        self.linears = linear_weights(self.model)
        self.tasks = list(tasks)
        self.whole_splits = tuple(whole_splits)  # scored on every row (else the first max_samples)
        weights = dict(task_weights or {})
        unknown = sorted(set(weights) - set(self.tasks))
        if unknown:
            raise ConfigError(f"evaluation: `task_weights` names unknown task(s) {unknown}; tasks: {self.tasks}")
        self.task_weights = {t: float(weights.get(t, 1.0)) for t in self.tasks}
        if sum(self.task_weights.values()) <= 0:
            raise ConfigError("evaluation: `task_weights` must not all be zero")
        self.data: dict[str, dict[str, Encoded]] = {}
        for name, splits in tasks.items():
            self.data[name] = {}
            for split, ds in splits.items():
                rows = scored_rows(ds, split, max_samples, whole_splits)
                enc = encode_dataset(self.tokenizer, rows, task_source(ds, name, split), context_length(self.model))
                self.data[name][split] = enc.sorted_by_length().to(self.device)
        self.max_new_tokens = max_new_tokens
        self._pool_cache: dict[str, Encoded] = {}
        self._keeps_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        # teacher-forced scores from hidden states, the output layer a few rows at a time
        # (evaluation/head.py): no batch of full-vocabulary logits
        probe = next((e.slice(0, 1) for splits in self.data.values() for e in splits.values() if len(e)), None)
        self._head, self._head_keys = (None, frozenset()) if probe is None else output_head(
            self.model, self.params, probe.input_ids, probe.attention_mask)
        self.logit_chunk = 1 << 26 if self.device.type == "cuda" else 1 << 22

    @classmethod
    def from_zoo(cls, zoo, tasks: Sequence[str] | None = None, metric: str = "token_accuracy",
                 max_samples: int | None = 200, **kwargs) -> "Evaluator":
        """An evaluator over the zoo's base and the validation/test splits of ``tasks`` (default all)."""
        return cls(zoo.base_dir, zoo.load_tasks(tasks), metric=metric, max_samples=max_samples, **kwargs)

    # ------------------------------------------------------------------ public
    def evaluate(self, candidate: Candidate, split: str = "validation") -> EvalResult:
        return self.evaluate_many([candidate], split)[0]

    def evaluate_many(self, candidates: Sequence[Candidate], split: str = "validation", *,
                      per_example: bool = False) -> list[EvalResult]:
        """Score every candidate; candidates share forward passes (see ``forward.applied``).

        ``per_example``: also return each example's metrics (``extra["examples"]``, see
        :class:`EvalResult`); the scores are the same bit for bit either way."""
        candidates = list(candidates)
        for t in self.tasks:
            if split not in self.data[t]:
                raise DataError(f"evaluation: task `{t}` has no split `{split}` (has {sorted(self.data[t])})")
        resolved = [self._resolve(c, i) for i, c in enumerate(candidates)]
        per_metric: list[dict[str, dict[str, float]]] = [{} for _ in candidates]
        examples: list[dict[str, dict[str, np.ndarray]]] = [{} for _ in candidates]
        if not any(isinstance(c, PerTask) for c in candidates):
            # one delta per candidate for every task: pool the tasks' rows into shared batches
            scores, rows = self._score(self._pooled(split), [r[self.tasks[0]] for r in resolved], len(self.tasks),
                                       per_example)
            for i, per_task in enumerate(scores):
                per_metric[i] = dict(zip(self.tasks, per_task))
                if per_example:
                    examples[i] = dict(zip(self.tasks, rows[i]))
        else:
            for t in self.tasks:
                scores, rows = self._score(self.data[t][split], [r[t] for r in resolved], 1, per_example)
                for i, s in enumerate(scores):
                    per_metric[i][t] = s[0]
                    if per_example:
                        examples[i][t] = rows[i][0]
        results = [self._result(m, split) for m in per_metric]
        if per_example:
            for res, ex in zip(results, examples):
                res.extra["examples"] = ex
        return results

    def evaluate_ensemble(
        self, candidates: Sequence[Candidate], split: str = "validation", sizes: Sequence[int] | None = None
    ) -> EvalResult:
        """Majority vote of the candidates' greedy answers (candidates ranked best first; a tie
        goes to the higher-ranked one), scored with the text metric, or exact match of the voted
        answer when the metric is teacher-forced (``extra["scored_by"]``, ``extra["note"]``).
        ``extra["by_k"][k]`` scores the top-k prefix ensembles for k in ``sizes`` (default 1..n),
        all voted from the same generations."""
        from evomerge.evaluation.ensemble import evaluate_ensemble

        return evaluate_ensemble(self, candidates, split, sizes)

    # ----------------------------------------------------------------- helpers
    def _resolve(self, candidate: Candidate, index: int) -> dict[str, dict[str, torch.Tensor]]:
        where = f"candidate {index}"
        if isinstance(candidate, PerTask):
            missing = [t for t in self.tasks if t not in candidate]
            if missing:
                raise ExpertLoadError(f"{where}: PerTask candidate has no entry for task(s) {missing}")
            return {t: to_deltas(candidate[t], self.params, f"{where} task `{t}`") for t in self.tasks}
        d = to_deltas(candidate, self.params, where)
        return {t: d for t in self.tasks}

    def _result(self, m: dict[str, dict[str, float]], split: str) -> EvalResult:
        key = "neg_cross_entropy" if self.metric == "neg_cross_entropy" else self.metric
        per_task = {t: m[t][key] for t in self.tasks}
        wsum = sum(self.task_weights.values())
        fitness = sum(self.task_weights[t] * per_task[t] for t in self.tasks) / wsum
        mean = {
            k: sum(self.task_weights[t] * m[t][k] for t in self.tasks) / wsum for k in next(iter(m.values()))
        }
        return EvalResult(per_task, float(fitness), {"split": split, "metrics": m, "mean": mean, "metric": self.metric})

    def _chunks(self, n_cand: int) -> int:
        return max(1, self.max_rows // self.batch_size) if n_cand > 1 else 1

    def group_size(self, n_cand: int) -> int:
        """How many of ``n_cand`` candidates share forward passes: a caller that builds
        candidates on demand (the population actor) hands them over this many at a time."""
        return self._chunks(n_cand)

    def _pooled(self, split: str) -> Encoded:
        """All tasks' rows of ``split`` in one length-sorted set (built once per split)."""
        if split not in self._pool_cache:
            parts = [self.data[t][split] for t in self.tasks]
            self._pool_cache[split] = pool(parts, pad_id(self.tokenizer)).sorted_by_length()
        return self._pool_cache[split]

    def _forward(self, forward, batch: Encoded, start: int, head=None) -> torch.Tensor:
        """Logits ``[C, B, T - start, V]``: only positions from ``start`` on (where answers are)
        go through the output layer when the model supports ``logits_to_keep``; ``V`` is the
        tokenizer's vocabulary where the model's is larger. With ``head`` (the output layer):
        the hidden states ``[C, B, T - start, H]`` that it would get."""
        kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        width = batch.input_ids.shape[1]
        with hidden_out(head) if head is not None else contextlib.nullcontext():
            if self._keeps_logits and start > 0:
                logits = forward(logits_to_keep=width - start, **kwargs)
            else:
                logits = forward(**kwargs)[:, :, start:]
        if head is not None:
            return logits
        return logits[..., : self.vocab] if logits.shape[-1] > self.vocab else logits

    def _score_batch(self, forward, group, batch: Encoded, g: torch.Tensor, out: torch.Tensor, keys,
                     per_row: torch.Tensor | None = None) -> None:
        """Add the per-row metrics of ``batch`` under each candidate of ``group`` to ``out[j, g]``
        (and, with ``per_row``, store them there: ``per_row[j, i]`` for row ``i`` of the batch)."""
        first = batch.answer_start()
        labels = batch.labels[:, first:]
        head = self._head if self._head is not None and not touches(self._head_keys, group) else None
        logits = self._forward(forward, batch, first, head)
        rows = torch.zeros(len(group), len(batch), len(keys), dtype=torch.float64)
        per_cand = []
        for j in range(len(group)):
            s = (M.teacher_forced(logits[j], labels) if head is None
                 else scores_by_rows(head, logits[j], labels, self.vocab, self.logit_chunk))
            per_cand.append(torch.stack([s[k] for k in keys[:3]], -1))
        rows[:, :, :3] = torch.stack(per_cand).cpu()  # one device sync per batch, not per candidate
        if self.text_metrics:
            gen = greedy_generate(self.model, self.params, self.linears, group, batch, self.tokenizer,
                                  self.max_new_tokens, forward=forward)
            refs = [self.tokenizer.tokenize(a) for a in batch.answers]
            for j, preds in enumerate(gen):
                ts = M.text_scores(preds, refs)
                rows[j, :, 3:] = torch.tensor([ts[k] for k in M.TEXT_METRICS], dtype=torch.float64).T
        out.index_add_(1, g, rows)
        if per_row is not None:
            per_row.copy_(rows)

    @torch.inference_mode()
    def _score(self, data: Encoded, deltas: list[dict[str, torch.Tensor]], n_groups: int, per_example: bool = False
               ) -> tuple[list[list[dict[str, float]]], list[list[dict[str, np.ndarray]]] | None]:
        """``out[i][g]``: metric means of candidate ``i`` over the rows of group ``g`` of ``data``
        (``data.group``; one group when it is None). With ``per_example``, also ``rows[i][g]``:
        ``{metric: array}`` of those rows' values in ``data.row`` order (else None). The means
        are the sums of the rows' values over their count either way."""
        n = len(deltas)
        keys = ("token_accuracy", "exact_match", "cross_entropy") + (M.TEXT_METRICS if self.text_metrics else ())
        groups = data.group.cpu() if data.group is not None else torch.zeros(len(data), dtype=torch.long)
        counts = torch.bincount(groups, minlength=n_groups).double()
        per_chunk = self._chunks(n)
        # candidates that share the same delta object are scored once
        uniq: dict[int, int] = {}
        order = [uniq.setdefault(id(d), len(uniq)) for d in deltas]
        uniq_deltas = [deltas[order.index(j)] for j in range(len(uniq))]
        uniq_sums = torch.zeros(len(uniq_deltas), n_groups, len(keys), dtype=torch.float64)
        uniq_rows = torch.zeros(len(uniq_deltas), len(data), len(keys), dtype=torch.float64) if per_example else None
        batches = [(s, data.slice(s, s + self.batch_size), groups[s : s + self.batch_size])
                   for s in range(0, len(data), self.batch_size)]
        for c0 in range(0, len(uniq_deltas), per_chunk):
            group = uniq_deltas[c0 : c0 + per_chunk]
            with applied(self.model, self.params, self.linears, group) as forward:
                for s, batch, g in batches:
                    self._score_batch(forward, group, batch, g, uniq_sums[c0 : c0 + len(group)], keys,
                                      None if uniq_rows is None else uniq_rows[c0 : c0 + len(group), s : s + len(batch)])
        sums = uniq_sums[torch.tensor(order)]
        means = sums / counts.clamp(min=1)[None, :, None]
        out = []
        for i in range(n):
            per_group = []
            for gi in range(n_groups):
                r = dict(zip(keys, means[i, gi].tolist()))
                r["neg_cross_entropy"] = -r["cross_entropy"]
                per_group.append(r)
            out.append(per_group)
        if uniq_rows is None:
            return out, None
        return out, [[self._by_row(uniq_rows[order[i]], data, groups, gi, keys) for gi in range(n_groups)]
                     for i in range(n)]

    @staticmethod
    def _by_row(values: torch.Tensor, data: Encoded, groups: torch.Tensor, g: int, keys) -> dict[str, np.ndarray]:
        """``{metric: array}`` of the rows of group ``g``, element ``i`` the split's row ``i``."""
        mask = groups == g
        rows = data.row.cpu()[mask] if data.row is not None else torch.arange(int(mask.sum()))
        order = torch.argsort(rows)
        if not torch.equal(rows[order], torch.arange(len(rows))):
            raise DataError("evaluation: per-example scores need each split's rows numbered 0..n-1")
        v = values[mask][order].numpy()
        out = {k: v[:, j].copy() for j, k in enumerate(keys)}
        out["neg_cross_entropy"] = -out["cross_entropy"]
        return out
