"""EMR-merging: one elected unified task vector plus per-task masks and rescalers."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from evomerge.merging.methods import _steps as st
from evomerge.merging.registry import Param, register_merge
from evomerge.merging.types import PerTaskMerge

_RESCALER = Param(
    "rescaler", str, "model", choices=("model", "tensor"),
    help="one rescaler per task over the whole model (model: EMR-merging's and fusion-bench's) "
    "or one per task and tensor (tensor)",
)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` per task, 0 where ``den`` is 0 (an empty mask: the task gets nothing)."""
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))


def model_rescalers(merged: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """EMR's rescaler over the whole model: task ``i`` gets
    ``sum_k mean|tau_i[k]| / sum_k mean|mask_i[k] * unified[k]|`` over every tensor ``k`` (the sum of
    per-tensor means, as EMR-merging's code and fusion-bench's ``emr_merge``); with
    ``rescaler: tensor`` the per-tensor rescalers are kept."""
    if params.get("rescaler", "model") != "model":
        return dict(merged)
    parts = [v for v in merged.values() if isinstance(v, PerTaskMerge)]
    if not parts:
        return dict(merged)
    num = torch.stack([v.task_mass.to("cpu") for v in parts]).sum(dim=0)
    den = torch.stack([v.kept_mass.to("cpu") for v in parts]).sum(dim=0)
    r = _ratio(num, den)
    return {
        k: v.replace(rescalers=r.to(device=v.rescalers.device, dtype=v.rescalers.dtype)) if isinstance(v, PerTaskMerge) else v
        for k, v in merged.items()
    }


@register_merge("emr", params=(_RESCALER,), per_task=True, finalize=model_rescalers)
def emr(deltas, weights, *, generator=None, stats=None, rescaler) -> PerTaskMerge:
    """EMR-merging (weights multiply each task vector first).

    Unified vector: sign of ``sum_i tau_i`` (+ where the sum is > 0, - otherwise: fusion-bench's
    rule), magnitude = largest ``|tau_i|`` among the experts that agree with it. Task ``i``: mask
    ``tau_i * sign > 0``; rescaler ``mean|tau_i| / mean|mask_i * unified|`` of this tensor (0 for an
    empty mask). Merged through :func:`evomerge.merging.apply.merge_task_vectors` with
    ``rescaler: model`` (the default) one scalar per task over all tensors replaces it.
    """
    st.check_deltas("emr", deltas)
    w = st.prepare_weights("emr", weights, deltas)
    work = st.working_copy(deltas).mul_(w.view(-1, 1))
    sign = torch.where(work.sum(dim=0) > 0, 1.0, -1.0).to(work.dtype)
    masks = (work * sign) > 0
    mag = (work.abs() * masks).amax(dim=0)
    unified = sign * mag
    task_mass = work.abs().to(torch.float64).mean(dim=1)
    kept_mass = (unified.abs().to(torch.float64) * masks).mean(dim=1)
    shape = deltas.shape[1:]
    return PerTaskMerge(
        unified=unified.reshape(shape).to(deltas.dtype),
        masks=masks.reshape(deltas.shape),
        rescalers=_ratio(task_mass, kept_mass).to(deltas.dtype),
        task_mass=task_mass,
        kept_mass=kept_mass,
    )
