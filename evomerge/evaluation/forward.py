"""Run the live base model with candidate weights swapped in, several candidates per pass.

Three paths, all leaving the base model's parameters untouched, all applied once per
candidate group (:func:`applied`) and reused for every batch:

* ``single``: one candidate whose deltas touch ``nn.Linear`` weights only: each adapted layer
  runs with ``W + delta`` (computed once) in place of ``W``.
* ``stacked``: when every delta touches ``nn.Linear`` weights only (LoRA experts, merged
  LoRA deltas), the batch is repeated once per candidate and each adapted linear layer
  multiplies its slice of the batch by that candidate's weight with one ``bmm``. One forward
  pass scores C candidates, which amortises the per-layer overhead of a small model.
* ``functional``: otherwise (embeddings, norms in a full task vector), one
  ``torch.func.functional_call`` per candidate with the patched parameters.

A LoRA candidate's delta arrives as :class:`~evomerge.evaluation.candidates.LowRank` factors:
on a linear layer it adds ``(x @ A.T) @ B.T`` to the layer's own output (stacked: one shared
matmul with the base weight for all candidates' rows plus one small ``bmm`` pair), so memory
grows with the factors, not with population x adapted weights. Only the functional path (and
a layer where LoRA and dense deltas mix) makes it dense.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from evomerge.evaluation.candidates import LowRank


def _dense(d):
    return d.dense() if isinstance(d, LowRank) else d


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


def _stacked_lowrank_forward(mod: nn.Module, factors: Sequence[LowRank | None], n: int):
    """A forward for ``mod`` over ``n`` candidate blocks: the layer's own weight for every row,
    plus candidate ``c``'s ``(x @ A.T) @ B.T`` on its block (zero factors where it has none)."""
    own = type(mod).forward.__get__(mod)
    ref = next(f for f in factors if f is not None)
    r = max(int(f.A.shape[0]) for f in factors if f is not None)
    if all(f is not None and f.A.shape[0] == r for f in factors):  # one copy kernel each, not n
        a = torch.stack([f.A.T for f in factors])
        b = torch.stack([f.B.T for f in factors])
    else:  # zero factors where a candidate has none, zero-padded ranks
        a = ref.A.new_zeros(n, ref.A.shape[1], r)
        b = ref.B.new_zeros(n, r, ref.B.shape[0])
        for c, f in enumerate(factors):
            if f is not None:
                a[c, :, : f.A.shape[0]] = f.A.T
                b[c, : f.A.shape[0]] = f.B.T

    def forward(x: torch.Tensor) -> torch.Tensor:
        y = own(x)
        low = torch.bmm(torch.bmm(x.reshape(n, -1, x.shape[-1]), a), b)
        return y + low.reshape(y.shape)

    return forward


def _lowrank_forward(mod: nn.Module, f: LowRank):
    own, at, bt = type(mod).forward.__get__(mod), f.A.T, f.B.T
    return lambda x: own(x) + (x @ at) @ bt


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
            got = [d.get(key) for d in deltas]
            if all(v is None or isinstance(v, LowRank) for v in got):
                mod.forward = _stacked_lowrank_forward(mod, got, n)
            else:
                w = torch.stack([base + _dense(v) if v is not None else base for v in got])
                mod.forward = _stacked_forward(mod, w, n, transposed=type(mod).__name__ == "Conv1D")
            patched.append(mod)
        yield n
    finally:
        for mod in patched:
            del mod.forward


def can_stack(deltas: Sequence[Mapping[str, torch.Tensor]], linears: Mapping[str, nn.Module]) -> bool:
    return all(k in linears for d in deltas for k in d)


def patched_params(params: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: params[k] + _dense(v) for k, v in delta.items()}


def _single_forward(mod: nn.Module, weight: torch.Tensor, transposed: bool):
    """``mod``'s forward with ``weight`` in place of its own (Conv1D stores ``[in, out]``)."""
    bias = mod.bias
    if transposed:
        return lambda x: torch.addmm(bias, x.reshape(-1, x.shape[-1]), weight).reshape(*x.shape[:-1], weight.shape[-1])
    return lambda x: nn.functional.linear(x, weight, bias)


@contextlib.contextmanager
def applied(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    linears: Mapping[str, nn.Module],
    deltas: Sequence[Mapping[str, torch.Tensor]],
) -> Iterator[Callable[..., torch.Tensor]]:
    """Apply the candidates' deltas once; inside the block, ``forward(per_candidate=False,
    logits_to_keep=None, **inputs)`` returns logits ``[C, B, T, V]`` for any number of batches.

    ``inputs`` are ``[B, ...]`` shared by all candidates, or ``[C*B, ...]`` candidate-major
    when ``per_candidate``. ``logits_to_keep`` (HF models that take it): logits of the last
    that many positions only. The base model's parameters are never modified.
    """
    n = len(deltas)

    def extra(logits_to_keep):
        return {"use_cache": False} if logits_to_keep is None else {"use_cache": False, "logits_to_keep": logits_to_keep}

    if can_stack(deltas, linears) and any(deltas):
        if n > 1:
            with stacked_weights(model, linears, deltas):
                def forward(per_candidate=False, logits_to_keep=None, **inputs):
                    rep = inputs if per_candidate else {k: v.repeat(n, *([1] * (v.dim() - 1))) for k, v in inputs.items()}
                    logits = model(**rep, **extra(logits_to_keep)).logits
                    return logits.reshape(n, -1, *logits.shape[1:])

                yield forward
            return
        patched = []
        try:
            for key, d in deltas[0].items():
                mod = linears[key]
                if isinstance(d, LowRank):
                    mod.forward = _lowrank_forward(mod, d)
                else:
                    mod.forward = _single_forward(mod, mod.weight + d, transposed=type(mod).__name__ == "Conv1D")
                patched.append(mod)

            def forward(per_candidate=False, logits_to_keep=None, **inputs):
                return model(**inputs, **extra(logits_to_keep)).logits[None]

            yield forward
        finally:
            for mod in patched:
                del mod.forward
        return
    merged = [patched_params(params, d) if d else None for d in deltas]

    def forward(per_candidate=False, logits_to_keep=None, **inputs):
        outs = []
        for c, p in enumerate(merged):
            inp = {k: v.reshape(n, -1, *v.shape[1:])[c] for k, v in inputs.items()} if per_candidate else inputs
            if p is None:
                outs.append(model(**inp, **extra(logits_to_keep)).logits)
            else:
                outs.append(torch.func.functional_call(
                    model, p, args=(), kwargs={**inp, **extra(logits_to_keep)}, strict=False, tie_weights=True,
                ).logits)
        return torch.stack(outs)

    yield forward
