"""Teacher-forced scores from hidden states, a few rows through the output layer at a time.

A batch's logits ``[rows, answer positions, vocabulary]`` are the largest tensor of a scoring
pass at a realistic vocabulary (51 MiB for 32 rows at 32k on the CPU; for 64 stacked candidates
of a 256k-vocabulary model on a GPU, tens of GiB). The model runs with its output layer
replaced by the identity, so it returns the last hidden states, and the output layer is applied
to ``chunk_elems`` logits' worth of rows at a time, each chunk scored and freed
(benchmarks/model_scale.py measured the actor's peak). Each chunk is made contiguous first: the
model's own output layer gets a strided slice of the answer positions, for which the CPU matmul
is about 3x slower (measured at width 512, vocabulary 32000).

Used only where it reproduces the model: :func:`output_head` checks once, on a real input, that
the output layer applied to the captured hidden states gives the model's own logits bit for
bit (a model that post-processes its logits, e.g. soft-capping or a logit scale, fails that and
keeps the whole-batch path), and a candidate that changes the output layer (or the input
embedding tied to it) is scored on the whole-batch path too.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn

from evomerge.evaluation import metrics as M


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@contextlib.contextmanager
def hidden_out(head: nn.Module) -> Iterator[None]:
    """Within the block the model's ``logits`` are the hidden states its output layer gets."""
    head.forward = _identity
    try:
        yield
    finally:
        del head.forward


def output_head(model: nn.Module, params: Mapping[str, torch.Tensor], input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> tuple[nn.Module | None, frozenset[str]]:
    """The model's output layer and the parameter names that hold its weights (tied embeddings
    included), or ``(None, {})`` when applying it to the captured hidden states does not give
    the model's logits exactly on ``input_ids``."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if get is not None else None
    if head is None or "forward" in vars(head) or getattr(head, "weight", None) is None:
        return None, frozenset()
    with torch.inference_mode():
        want = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        with hidden_out(head):
            hidden = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        got = head(hidden)
    if got.shape != want.shape or got.dtype != want.dtype or not torch.equal(got, want):
        return None, frozenset()
    mine = {t.data_ptr() for t in head.parameters()}
    return head, frozenset(k for k, p in params.items() if p.data_ptr() in mine)


def touches(keys: frozenset[str], deltas: Sequence[Mapping[str, object]]) -> bool:
    return any(k in keys for d in deltas for k in d)


def scores_by_rows(head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor, vocab: int,
                   chunk_elems: int) -> dict[str, torch.Tensor]:
    """:func:`~evomerge.evaluation.metrics.teacher_forced` of ``head(hidden)[..., :vocab]``
    against ``labels``, ``chunk_elems`` logits at a time (rows are independent)."""
    per_row = max(1, hidden.shape[1] * int(head.weight.shape[0]))
    rows = max(1, chunk_elems // per_row)
    parts = []
    for i in range(0, len(hidden), rows):
        logits = head(hidden[i : i + rows].contiguous())  # a strided slice runs the matmul 3x slower
        logits = logits[..., :vocab] if logits.shape[-1] > vocab else logits
        parts.append(M.teacher_forced(logits, labels[i : i + rows], chunk_elems=chunk_elems))
        del logits
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
