"""Batched greedy decoding of short answers for several candidates at once."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from evomerge.evaluation.encoding import Encoded, pad_id
from evomerge.evaluation.forward import applied


def greedy_generate(
    model,
    params: Mapping[str, torch.Tensor],
    linears: Mapping[str, torch.nn.Module],
    deltas: Sequence[Mapping[str, torch.Tensor]],
    batch: Encoded,
    tokenizer,
    max_new_tokens: int | None = None,
    *,
    forward=None,
) -> list[list[list[str]]]:
    """Greedy continuations of ``batch``'s prompts: ``out[c][i]`` = tokens for candidate c, row i.

    Prompts are left-padded with explicit position ids; answers are short, so the model is
    re-run on the whole sequence each step (no KV cache). Stops at EOS. Only the tokenizer's
    tokens are candidates (a model with a larger, padded vocabulary never emits an id that has
    no token). ``forward``: the
    callable of an open :func:`~evomerge.evaluation.forward.applied` block for ``deltas``
    (the deltas are applied here otherwise).
    """
    if forward is None:
        with applied(model, params, linears, deltas) as fwd:
            return greedy_generate(model, params, linears, deltas, batch, tokenizer, max_new_tokens, forward=fwd)
    n, b = len(deltas), len(batch)
    eos = tokenizer.eos_token_id
    vocab = len(tokenizer)  # a model's output rows past the tokenizer's (padded embeddings) cannot be decoded
    pad = pad_id(tokenizer)
    plen = batch.prompt_len.tolist()
    width = max(plen)
    ids = torch.full((b, width), pad, dtype=torch.long, device=batch.input_ids.device)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(plen):
        ids[i, width - p :] = batch.input_ids[i, :p]
        mask[i, width - p :] = 1
    if max_new_tokens is None:
        answer_len = int((batch.labels != -100).sum(1).max())
        max_new_tokens = answer_len + 4
    ids = ids.repeat(n, 1)
    mask = mask.repeat(n, 1)
    done = torch.zeros(n * b, dtype=torch.bool, device=ids.device)
    new: list[torch.Tensor] = []
    for _ in range(max_new_tokens):
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = forward(per_candidate=True, input_ids=ids, attention_mask=mask, position_ids=pos)
        nxt = logits.reshape(n * b, *logits.shape[2:])[:, -1, :vocab].argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        new.append(nxt)
        done = done | (nxt == eos)
        ids = torch.cat([ids, nxt[:, None]], 1)
        mask = torch.cat([mask, (~done | (nxt == eos)).long()[:, None]], 1)
        if bool(done.all()):
            break
    gen = torch.stack(new, 1).tolist()
    out: list[list[list[str]]] = []
    for c in range(n):
        rows = []
        for i in range(b):
            toks = []
            for t in gen[c * b + i]:
                if t == eos:
                    break
                toks.append(t)
            rows.append(tokenizer.convert_ids_to_tokens(toks))
        out.append(rows)
    return out
