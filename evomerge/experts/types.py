"""In-memory representations shared by every layer.

Conventions (used by merging, search, evaluation and the Ray actors alike):

* A *task vector* is a ``TensorDict`` keyed by the **base model's parameter name**
  (e.g. ``"model.layers.0.self_attn.q_proj.weight"``), value ``theta_expert - theta_base``.
* A LoRA expert is a ``dict[str, LoraModule]`` keyed the same way (the weight it adapts);
  its task vector for that weight is ``scale * B @ A``.
* The "ab" space used by GENOME and Model Swarms flattens LoRA factors into a ``TensorDict``
  with keys ``f"{weight_name}::A"`` and ``f"{weight_name}::B"`` (see :func:`lora_to_ab`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

TensorDict = dict[str, torch.Tensor]

AB_SUFFIX_A = "::A"
AB_SUFFIX_B = "::B"


@dataclass(frozen=True)
class LoraModule:
    """LoRA factors for one adapted weight: ``delta = scale * B @ A``.

    A: ``[r, in_features]``; B: ``[out_features, r]``. ``fan_in_fan_out`` marks weights stored
    transposed (GPT-2 ``Conv1D``), whose delta is ``(scale * B @ A).T``.
    """

    A: torch.Tensor
    B: torch.Tensor
    scale: float
    fan_in_fan_out: bool = False

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    def delta(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        a, b = self.A, self.B
        if dtype is not None:
            a, b = a.to(dtype), b.to(dtype)
        d = (b @ a) * self.scale
        return d.T if self.fan_in_fan_out else d


def lora_deltas(modules: Mapping[str, LoraModule], dtype: torch.dtype | None = None) -> TensorDict:
    """Full-space task vector of a LoRA expert, keyed by base weight name."""
    return {k: m.delta(dtype) for k, m in modules.items()}


def lora_to_ab(modules: Mapping[str, LoraModule]) -> TensorDict:
    """Flatten LoRA factors to the "ab" space (scale folded into B so all particles share scale 1)."""
    out: TensorDict = {}
    for k, m in modules.items():
        out[k + AB_SUFFIX_A] = m.A
        out[k + AB_SUFFIX_B] = m.B * m.scale
    return out


def ab_to_lora(ab: Mapping[str, torch.Tensor], fan_in_fan_out: Mapping[str, bool] | None = None) -> dict[str, LoraModule]:
    """Inverse of :func:`lora_to_ab` (the scale was folded into B, so scale is 1)."""
    fan = fan_in_fan_out or {}
    out: dict[str, LoraModule] = {}
    for key, a in ab.items():
        if key.endswith(AB_SUFFIX_A):
            name = key[: -len(AB_SUFFIX_A)]
            out[name] = LoraModule(A=a, B=ab[name + AB_SUFFIX_B], scale=1.0, fan_in_fan_out=fan.get(name, False))
    return out
