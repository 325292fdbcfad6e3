"""EMR-merging: one elected unified task vector plus per-task masks and rescalers."""

from __future__ import annotations

import torch

from evomerge.merging.methods import _steps as st
from evomerge.merging.registry import register_merge
from evomerge.merging.types import PerTaskMerge


@register_merge("emr", per_task=True)
def emr(deltas, weights, *, generator=None, stats=None) -> PerTaskMerge:
    """EMR-merging (weights multiply each task vector first).

    Unified vector: sign of ``sum_i tau_i`` (0 elects +), magnitude = largest ``|tau_i|``
    among the experts that agree with it. Task ``i``: mask ``tau_i * unified > 0`` and
    rescaler ``sum|tau_i| / sum|mask_i * unified|`` (0 when the mask is empty).
    """
    st.check_deltas("emr", deltas)
    w = st.prepare_weights("emr", weights, deltas)
    n = deltas.shape[0]
    work = st.working_copy(deltas).mul_(w.view(-1, 1))
    positive = work.sum(dim=0) >= 0
    sign = torch.where(positive, 1.0, -1.0).to(work.dtype)
    mag = torch.zeros_like(work[0])
    for row in work:
        mag = torch.maximum(mag, (row * sign).clamp_(min=0))
    unified = sign * mag
    masks = work * unified > 0
    rescalers = torch.zeros(n, dtype=work.dtype, device=work.device)
    for i in range(n):
        den = (unified.abs() * masks[i]).sum()
        if den > 0:
            rescalers[i] = work[i].abs().sum() / den
    shape = deltas.shape[1:]
    return PerTaskMerge(
        unified=unified.reshape(shape).to(deltas.dtype),
        masks=masks.reshape(deltas.shape),
        rescalers=rescalers.to(deltas.dtype),
    )
