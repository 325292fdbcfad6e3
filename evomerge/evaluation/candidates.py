"""Candidates: what the Evaluator scores, normalised to deltas on base parameters (dense, or a
LoRA's factors kept as :class:`LowRank` so that no candidate's dense delta is ever built)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Union

import torch

from evomerge.errors import ExpertLoadError
from evomerge.experts.types import AB_SUFFIX_A, AB_SUFFIX_B, LoraModule, ab_to_lora


class PerTask(dict):
    """``{task: candidate}``: each task is served by its own candidate (e.g. EMR-merging)."""


@dataclass(frozen=True)
class LowRank:
    """A LoRA delta as its factors: ``B @ A`` (scale folded into B; ``.T`` when ``transposed``,
    for GPT-2 ``Conv1D`` weights). A linear layer adds ``(x @ A.T) @ B.T`` to its output, so a
    population of candidates costs its factors, not a dense copy of every adapted weight each."""

    A: torch.Tensor  # [r, in_features]
    B: torch.Tensor  # [out_features, r]
    transposed: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        out_f, in_f = int(self.B.shape[0]), int(self.A.shape[1])
        return (in_f, out_f) if self.transposed else (out_f, in_f)

    def dense(self) -> torch.Tensor:
        d = self.B @ self.A
        return d.T if self.transposed else d


Candidate = Union[Mapping[str, torch.Tensor], Mapping[str, LoraModule], PerTask]


def to_deltas(
    candidate: Mapping, params: Mapping[str, torch.Tensor], where: str = "candidate"
) -> dict[str, "torch.Tensor | LowRank"]:
    """Deltas keyed by base parameter name, on the base's device and dtype: tensors, and
    :class:`LowRank` factors for LoRA modules (see :mod:`evomerge.evaluation.forward`).

    Accepts a task vector TensorDict, a LoRA ``dict[str, LoraModule]`` or an "ab"-space
    TensorDict (``name::A`` / ``name::B``). Raises :class:`ExpertLoadError` naming the first
    key that is not a base parameter or whose shape does not fit.
    """
    if isinstance(candidate, PerTask):
        raise ExpertLoadError(f"{where}: a PerTask candidate cannot be nested inside another candidate")
    if not isinstance(candidate, Mapping):
        raise ExpertLoadError(f"{where}: expected a dict of tensors or LoraModules, got {type(candidate).__name__}")
    items = dict(candidate)
    if any(k.endswith(AB_SUFFIX_A) or k.endswith(AB_SUFFIX_B) for k in items):
        for k in items:
            if k.endswith(AB_SUFFIX_A) and k[: -len(AB_SUFFIX_A)] + AB_SUFFIX_B not in items:
                raise ExpertLoadError(f"{where}: `{k}` has no matching `::B` factor")
        items = ab_to_lora(items)
    out: dict[str, torch.Tensor] = {}
    finite: list[torch.Tensor] = []  # one device sync per candidate, not two per module (GPU)
    for key, value in items.items():
        if key not in params:
            raise ExpertLoadError(
                f"{where}: key `{key}` is not a parameter of the base model "
                f"(base parameters look like `{next(iter(params))}`)"
            )
        ref = params[key]
        if isinstance(value, LoraModule):  # cast where the factors are; moved below, all in one copy
            delta = LowRank(value.A.detach().to(dtype=ref.dtype),
                            (value.B.detach().to(torch.float32) * value.scale).to(dtype=ref.dtype),
                            value.fan_in_fan_out)
        elif isinstance(value, torch.Tensor):
            delta = value
        else:
            raise ExpertLoadError(f"{where}: value of `{key}` is a {type(value).__name__}, not a tensor or LoraModule")
        if tuple(delta.shape) != tuple(ref.shape):
            raise ExpertLoadError(
                f"{where}: `{key}` has shape {tuple(delta.shape)} but the base parameter has {tuple(ref.shape)}"
            )
        finite.append(_all_finite(delta))  # a LoRA's factors as cast; a dense delta as given
        out[key] = delta if isinstance(delta, LowRank) else delta.detach().to(device=ref.device, dtype=ref.dtype)
    if not _none_false(finite):
        bad = next(k for k, f in zip(out, finite) if not bool(f))
        raise ExpertLoadError(f"{where}: `{bad}` contains NaN or infinite values")
    away: dict[tuple[torch.device, torch.dtype], list[str]] = {}
    for k, d in out.items():
        if isinstance(d, LowRank) and d.A.device != params[k].device:
            away.setdefault((params[k].device, d.A.dtype), []).append(k)
    for (device, _), keys in away.items():
        out.update(gather_factors({k: out[k] for k in keys}, device))
    return out


def gather_factors(factors: Mapping[str, LowRank], device: torch.device) -> dict[str, LowRank]:
    """``factors`` on ``device`` through one copy, as views of one buffer; values unchanged (a
    LoRA on every linear of a 1b Llama has 224 factors of 8-128 KiB: one copy each is 224
    transfers per candidate). All factors must share one dtype."""
    parts = [t for f in factors.values() for t in (f.A, f.B)]
    flat = torch.cat([t.reshape(-1) for t in parts]).to(device)
    views = iter(flat.split([t.numel() for t in parts]))
    return {k: LowRank(next(views).view(f.A.shape), next(views).view(f.B.shape), f.transposed)
            for k, f in factors.items()}


def _all_finite(delta: "torch.Tensor | LowRank") -> torch.Tensor:
    """A 0-dim bool tensor on the delta's device (no device sync)."""
    if isinstance(delta, LowRank):
        return torch.isfinite(delta.A).all() & torch.isfinite(delta.B).all()
    return torch.isfinite(delta).all()


def _none_false(flags: list[torch.Tensor]) -> bool:
    """Whether all 0-dim bool ``flags`` are true: one sync per device they are on."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for f in flags:
        by_device.setdefault(f.device, []).append(f)
    return all(bool(torch.stack(fs).all()) for fs in by_device.values())
