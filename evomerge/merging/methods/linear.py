"""Linear merges: weight averaging and task arithmetic."""

from __future__ import annotations

import torch

from evomerge.merging.methods import _steps as st
from evomerge.merging.methods._params import LAMBDA
from evomerge.merging.registry import register_merge


@register_merge("weight_average", linear=True)
def weight_average(deltas: torch.Tensor, weights: torch.Tensor | None, *, generator=None, stats=None) -> torch.Tensor:
    """Weighted mean ``sum_i w_i tau_i / sum_i w_i`` (plain mean without weights); the weights
    are importances (>= 0), and all-zero weights give a zero delta (the base model).
    """
    st.check_deltas("weight_average", deltas)
    w = st.prepare_weights("weight_average", weights, deltas, nonnegative=True)
    total = float(w.sum())
    if total == 0.0:  # (non-negative weights sum to 0 only when all are 0)
        return torch.zeros_like(deltas[0])
    return st.finish(st.weighted_sum_(st.working_copy(deltas), w / total), 1.0, deltas)


@register_merge("task_arithmetic", params=(LAMBDA,), linear=True)
def task_arithmetic(deltas: torch.Tensor, weights: torch.Tensor | None, *, generator=None, stats=None, lam) -> torch.Tensor:
    """``lambda * sum_i w_i tau_i`` (weights default to 1)."""
    st.check_deltas("task_arithmetic", deltas)
    w = st.prepare_weights("task_arithmetic", weights, deltas)
    return st.finish(st.weighted_sum_(st.working_copy(deltas), w), lam, deltas)
