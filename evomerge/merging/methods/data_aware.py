"""Merges that read statistics gathered on a little data: Fisher merging and RegMean.

Weights here are non-negative importances (a weighted mean / weighted least squares), so
negative weights raise :class:`ConfigError`; all-zero weights give a zero delta.
"""

from __future__ import annotations

import torch

from evomerge.errors import ConfigError
from evomerge.merging.methods import _steps as st
from evomerge.merging.registry import Param, register_merge


def _stat(name: str, stats, key: str, deltas: torch.Tensor) -> torch.Tensor:
    if not stats or key not in stats:
        raise ConfigError(
            f"merge method `{name}` needs stats[{key!r}] (computed on a few samples of each expert's data); "
            "give data files in the merge config."
        )
    return stats[key]


_EPS = Param("epsilon", float, 1e-8, low=0.0, help="floor added to every Fisher value (so all-zero coordinates average)")


@register_merge("fisher", params=(_EPS,), needs=("fisher",))
def fisher(deltas, weights, *, generator=None, stats=None, epsilon):
    """Fisher merging: ``sum_i w_i F_i tau_i / sum_i w_i F_i`` with ``F_i + epsilon`` per coordinate."""
    st.check_deltas("fisher", deltas)
    f = _stat("fisher", stats, "fisher", deltas)
    if tuple(f.shape) != tuple(deltas.shape):
        raise ConfigError(
            f"merge method `fisher`: stats['fisher'] must have the deltas' shape {tuple(deltas.shape)}. "
            f"Got {tuple(f.shape)} instead."
        )
    w = st.prepare_weights("fisher", weights, deltas, nonnegative=True)
    n = deltas.shape[0]
    fw = f.reshape(n, -1).to(device=deltas.device, dtype=st.compute_dtype(deltas.dtype), copy=True)
    if (fw < 0).any():
        raise ConfigError("merge method `fisher`: stats['fisher'] must be >= 0 (a diagonal Fisher).")
    fw.add_(epsilon).mul_(w.view(-1, 1))
    den = fw.sum(dim=0)
    num = (fw.mul_(deltas.reshape(n, -1).to(fw.dtype))).sum(dim=0)
    out = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))
    return st.finish(out, 1.0, deltas)


_ALPHA = Param(
    "alpha", float, 0.9, low=0.0, high=1.0,
    help="scale of the Gram matrices' off-diagonal entries (1 = exact least squares)", tune_low=0.5, tune_high=1.0,
)


@register_merge("regmean", params=(_ALPHA,), needs=("gram",))
def regmean(deltas, weights, *, generator=None, stats=None, alpha):
    """RegMean: per linear weight ``tau* = (sum_i w_i tau_i G_i) (sum_i w_i G_i)^-1``.

    ``G_i = X_i^T X_i`` ``[in, in]`` of the layer's inputs on expert i's data, off-diagonals
    scaled by ``alpha``. Because the same matrix multiplies base and experts, merging task
    vectors equals merging weights (the base cancels). A weight is ``[out, in]``
    (``nn.Linear``); ``stats["fan_in_fan_out"]=True`` marks ``[in, out]`` (GPT-2 Conv1D).
    Tensors without a Gram matrix (biases, embeddings, norms) get the weighted mean.
    """
    st.check_deltas("regmean", deltas)
    w = st.prepare_weights("regmean", weights, deltas, nonnegative=True)
    if bool((w == 0).all()):
        return torch.zeros_like(deltas[0])
    gram = (stats or {}).get("gram")
    if gram is None or deltas.dim() != 3:
        work = st.weighted_sum_(st.working_copy(deltas), w / w.sum())
        return st.finish(work, 1.0, deltas)
    n = deltas.shape[0]
    transposed = bool((stats or {}).get("fan_in_fan_out", False))
    tau = deltas.transpose(1, 2) if transposed else deltas  # [n, out, in]
    d_in = tau.shape[2]
    if tuple(gram.shape) != (n, d_in, d_in):
        raise ConfigError(
            f"merge method `regmean`: stats['gram'] must have shape {(n, d_in, d_in)} for deltas of shape "
            f"{tuple(deltas.shape)}. Got {tuple(gram.shape)} instead."
        )
    g = gram.to(device=deltas.device, dtype=torch.float64)
    if alpha != 1.0:
        diag = torch.diag_embed(torch.diagonal(g, dim1=1, dim2=2))
        g = alpha * g + (1.0 - alpha) * diag
    w64 = w.to(torch.float64).view(-1, 1, 1)
    lhs = (w64 * g).sum(dim=0)  # [in, in], symmetric
    rhs = (w64 * g).matmul(tau.to(torch.float64).transpose(1, 2)).sum(dim=0)  # sum_i w_i G_i tau_i^T  [in, out]
    try:
        sol = torch.linalg.solve(lhs, rhs)
    except RuntimeError:  # singular: least-norm solution
        sol = torch.linalg.pinv(lhs, hermitian=True) @ rhs
    out = sol if transposed else sol.T  # [in, out] -> stored layout
    return out.contiguous().to(deltas.dtype)
