"""Run the live base model with candidate weights swapped in, several candidates per pass.

Two paths, both leaving the base model untouched:

* ``stacked``: when every delta touches ``nn.Linear`` weights only (LoRA experts, merged
  LoRA deltas), the batch is repeated once per candidate and each adapted linear layer
  multiplies its slice of the batch by that candidate's weight with one ``bmm``. One forward
  pass scores C candidates, which amortises the per-layer overhead of a small model.
* ``functional``: otherwise (embeddings, norms in a full task vector), one
  ``torch.func.functional_call`` per candidate with the patched parameters.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn


def linear_weights(model: nn.Module) -> dict[str, nn.Module]:
    """``{weight name: module}`` for every ``nn.Linear`` (and GPT-2 style ``Conv1D``)."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) or type(mod).__name__ == "Conv1D":
            out[f"{name}.weight" if name else "weight"] = mod
    return out


def _stacked_forward(mod: nn.Module, weight: torch.Tensor, n: int, transposed: bool):
    """A forward for ``mod`` whose input batch is ``n`` candidate blocks; ``weight`` is [n, out, in]."""
    bias = mod.bias
    wt = (weight.transpose(1, 2) if not transposed else weight).contiguous()  # [n, in, out]

    def forward(x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.bmm(x.reshape(n, -1, shape[-1]), wt)
        if bias is not None:
            y = y + bias
        return y.reshape(*shape[:-1], wt.shape[-1])

    return forward


@contextlib.contextmanager
def stacked_weights(
    model: nn.Module, linears: Mapping[str, nn.Module], deltas: Sequence[Mapping[str, torch.Tensor]]
) -> Iterator[int]:
    """Within the block, a batch of ``len(deltas) * B`` rows runs candidate ``c`` on rows ``c*B:(c+1)*B``."""
    n = len(deltas)
    keys = sorted({k for d in deltas for k in d})
    patched = []
    try:
        for key in keys:
            mod = linears[key]
            base = mod.weight
            w = torch.stack([base + d[key] if key in d else base for d in deltas])
            mod.forward = _stacked_forward(mod, w, n, transposed=type(mod).__name__ == "Conv1D")
            patched.append(mod)
        yield n
    finally:
        for mod in patched:
            del mod.forward


def can_stack(deltas: Sequence[Mapping[str, torch.Tensor]], linears: Mapping[str, nn.Module]) -> bool:
    return all(k in linears for d in deltas for k in d)


def patched_params(params: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: params[k] + v for k, v in delta.items()}


def run_model(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    linears: Mapping[str, nn.Module],
    deltas: Sequence[Mapping[str, torch.Tensor]],
    *,
    per_candidate: bool = False,
    logits_to_keep: int | None = None,
    **inputs: torch.Tensor,
) -> torch.Tensor:
    """Logits ``[C, B, T, V]`` of the base model under each of ``deltas`` (C of them).

    ``inputs`` are ``[B, ...]`` shared by all candidates, or ``[C*B, ...]`` candidate-major
    when ``per_candidate``. ``logits_to_keep`` (HF models that take it): logits of the last
    that many positions only.
    """
    n = len(deltas)
    extra = {"use_cache": False} if logits_to_keep is None else {"use_cache": False, "logits_to_keep": logits_to_keep}
    if n > 1 and can_stack(deltas, linears):
        rep = inputs if per_candidate else {k: v.repeat(n, *([1] * (v.dim() - 1))) for k, v in inputs.items()}
        with stacked_weights(model, linears, deltas):
            logits = model(**rep, **extra).logits
        return logits.reshape(n, -1, *logits.shape[1:])
    outs = []
    for c, d in enumerate(deltas):
        inp = inputs
        if per_candidate:
            inp = {k: v.reshape(n, -1, *v.shape[1:])[c] for k, v in inputs.items()}
        if d:
            logits = torch.func.functional_call(
                model, patched_params(params, d), args=(), kwargs={**inp, **extra},
                strict=False, tie_weights=True,
            ).logits
        else:
            logits = model(**inp, **extra).logits
        outs.append(logits)
    return torch.stack(outs)
