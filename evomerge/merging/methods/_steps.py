"""Building blocks shared by the operators: checks and weights, the sign election with its
disjoint mean (three back-ends), weighted sums and the final cast. All work on a private working
copy; nothing here touches a caller's tensor in place. Selection lives in
:mod:`~evomerge.merging.methods._select`, keep modes in :mod:`~evomerge.merging.methods._keep`,
DARE's fast mask in :mod:`~evomerge.merging.methods._dare`.

Semantics follow ``peft.utils.merge_utils`` where peft has the same step (so results can be
compared bit for bit on CPU): ``k = int(density * numel)`` values are kept by magnitude; DARE
keeps a coordinate when a uniform draw is ``< density`` (the draw ``torch.bernoulli`` makes),
one tensor after another from the same generator; the sign is elected on the *unweighted*
sparsified tensors and weights multiply afterwards; the disjoint mean divides by the number of
experts that agree with the elected sign (not by their weights).

evomerge options that change those semantics on purpose (see :func:`sparse_sign_merge`,
:class:`~evomerge.merging.methods._dare.FastDareMask`): ``disjoint="weighted"`` divides by the
agreeing *weights*, ``disjoint="sum"`` does not divide (the paper code's merge), and the
``rng="fast"`` DARE mask draws 8 bits per coordinate from a numpy PCG64 stream instead of a
``torch.rand`` float (same distribution, different draws, several times cheaper).
"""

from __future__ import annotations

import torch

from evomerge.errors import ConfigError
from evomerge.merging.methods import _cuda
from evomerge.merging.methods._keep import CpuKeep, Keep, KernelDare, KernelTopK, compute_dtype
from evomerge.merging.methods._keep import dare_keep, magnitude_keep  # noqa: F401  (the operators' steps)
from evomerge.merging.methods._select import band_mask

_CHUNK_ELEMS_CPU = 1 << 18  # column block (all experts) processed at once: fits in cache
_CHUNK_ELEMS_GPU = 1 << 26


def check_deltas(name: str, deltas: torch.Tensor) -> None:
    if not isinstance(deltas, torch.Tensor) or deltas.dim() < 1 or deltas.shape[0] < 1:
        raise ConfigError(f"merge method `{name}`: deltas must be a stacked tensor [n, *shape] with n >= 1.")
    if not deltas.is_floating_point():
        raise ConfigError(f"merge method `{name}`: deltas must be floating point. Got {deltas.dtype} instead.")


def prepare_weights(
    name: str, weights: torch.Tensor | None, deltas: torch.Tensor, *, nonnegative: bool = False
) -> torch.Tensor:
    """Weights as a ``[n]`` tensor on the deltas' device (``None`` means all ones)."""
    n = deltas.shape[0]
    dtype = compute_dtype(deltas.dtype)
    if weights is None:
        return torch.ones(n, dtype=dtype, device=deltas.device)
    w = torch.as_tensor(weights).to(device=deltas.device, dtype=dtype)
    if w.shape != (n,):
        raise ConfigError(
            f"merge method `{name}`: `weights` must have one entry per expert ({n}). Got shape {tuple(w.shape)} instead."
        )
    if not torch.isfinite(w).all():
        raise ConfigError(f"merge method `{name}`: `weights` must be finite. Got {w.tolist()} instead.")
    if nonnegative and (w < 0).any():
        raise ConfigError(f"merge method `{name}`: `weights` must be >= 0. Got {w.tolist()} instead.")
    return w


def working_copy(deltas: torch.Tensor) -> torch.Tensor:
    """A private ``[n, numel]`` copy in the compute dtype."""
    n = deltas.shape[0]
    return deltas.reshape(n, -1).to(dtype=compute_dtype(deltas.dtype), copy=True)


def _chunk_cols(rows: torch.Tensor) -> int:
    budget = _CHUNK_ELEMS_CPU if rows.device.type == "cpu" else _CHUNK_ELEMS_GPU
    return max(1024, budget // rows.shape[0]) // 64 * 64  # a multiple of 8 (FastDareMask words)


def _seq_sum(sub: torch.Tensor) -> torch.Tensor:
    # expert after expert, the order torch.sum(dim=0) uses on large stacks (bit-compatible with peft there)
    acc = sub[0].clone()
    for r in sub[1:]:
        acc += r
    return acc


DISJOINT_MODES = ("count", "weighted", "sum")


def sparse_sign_merge(
    rows: torch.Tensor,
    weights: torch.Tensor,
    keep: Keep,
    sign_method: str | None,
    disjoint: str = "count",
    exact: bool = True,
) -> torch.Tensor:
    """Sparsify each row, then either elect signs and merge the agreeing values
    (``sign_method`` given) or take the weighted sum (``sign_method=None``).

    The sign is elected on the unweighted sparsified rows. At each coordinate, over the experts
    ``A`` whose value is nonzero and has the elected sign:
    ``disjoint="count"`` (peft): ``sum_{i in A} w_i x_i / max(|A|, 1)``;
    ``disjoint="weighted"``: ``sum_{i in A} w_i x_i / sum_{i in A} w_i``, and 0 where that
    denominator is 0 (no expert agrees, or their weights cancel);
    ``disjoint="sum"``: ``sum_{i in A} w_i x_i``.

    Back-ends: a ``Kernel*`` keep mode, or no keep where the kernels are usable, runs the fused
    GPU kernel of :mod:`evomerge.merging.methods._cuda` (one read of the experts; sums in kernel
    order). Otherwise the torch path works block by block over columns on a private copy of the
    block (never a full ``[n, numel]`` temporary, never a write to ``rows``): ``exact=True``
    sums expert after expert in peft's order (bit-identical results); ``exact=False`` uses fewer
    passes (weighted sums as one matrix-vector product, the agreeing values as
    ``relu(sign * x)``): the same maths, different float rounding.
    """
    if disjoint not in DISJOINT_MODES:
        raise ConfigError(f"`disjoint` must be one of {list(DISJOINT_MODES)}. Got {disjoint!r} instead.")
    if isinstance(keep, KernelTopK):
        return _cuda.sign_merge(rows, weights, keep.thresholds, None, sign_method, disjoint, (keep.k, keep.n_ge))
    if isinstance(keep, KernelDare):
        return _cuda.sign_merge(rows, weights, None, (keep.seed, keep.density), sign_method, disjoint)
    if keep is None and _cuda.usable(rows):
        return _cuda.sign_merge(rows, weights, None, None, sign_method, disjoint)
    return _torch_merge(rows, weights, keep, sign_method, disjoint, exact)


def _torch_merge(rows, weights, keep: CpuKeep | None, sign_method, disjoint, exact) -> torch.Tensor:
    """:func:`sparse_sign_merge`'s torch back-end (column blocks, exact or few-pass)."""
    n, numel = rows.shape
    dtype = compute_dtype(rows.dtype)
    out = torch.empty(numel, dtype=dtype, device=rows.device)
    step = _chunk_cols(rows)
    work = torch.empty(n * min(step, numel), dtype=dtype, device=rows.device)
    w = weights.view(-1, 1)
    block = _fast_block if not exact else _exact_block
    for c0 in range(0, numel, step):
        c1 = min(numel, c0 + step)
        buf = work[: n * (c1 - c0)].view(n, c1 - c0)
        sub = buf.copy_(rows[:, c0:c1]) if keep is None else keep.load(rows, c0, c1, buf)
        res = block(sub, w, sign_method, disjoint)
        if keep is not None and keep.out_divisor != 1.0:
            res.div_(keep.out_divisor)
        out[c0:c1] = res
    return out


def _exact_block(sub: torch.Tensor, w: torch.Tensor, sign_method: str | None, disjoint: str) -> torch.Tensor:
    """One block summed expert after expert, in peft's order (overwrites ``sub``)."""
    if sign_method is None:
        return _seq_sum(sub.mul_(w))
    score = _seq_sum(sub) if sign_method == "total" else _seq_sum(torch.sign(sub))
    sign = score.ge_(0).mul_(2).sub_(1)  # +1 / -1 (a tie elects +1)
    agree = torch.mul(sub, sign).gt_(0)  # float 0/1: nonzero and agreeing
    if disjoint == "count":
        denom = agree.sum(dim=0).clamp_(min=1)
        return _seq_sum(sub.mul_(w).mul_(agree)).div_(denom)
    if disjoint == "sum":
        return _seq_sum(sub.mul_(w).mul_(agree))
    agree.mul_(w)  # w_i where expert i agrees, else 0
    denom = _seq_sum(agree)
    none = denom == 0
    return _seq_sum(sub.mul_(agree)).div_(denom.masked_fill_(none, 1.0)).masked_fill_(none, 0.0)


def _wsum(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i x_i`` of a block: one BLAS matrix-vector product on CPU; elsewhere an
    elementwise sum (a GPU matmul may run in TF32 when the user allows it)."""
    if x.device.type == "cpu":
        return torch.matmul(w.view(1, -1), x).view(-1)
    return (x * w.view(-1, 1)).sum(dim=0)


def _fast_block(sub: torch.Tensor, w: torch.Tensor, sign_method: str | None, disjoint: str) -> torch.Tensor:
    """:func:`sparse_sign_merge` of one block with few passes (overwrites ``sub``)."""
    if sign_method is None:
        return _wsum(w, sub)
    score = sub.sum(dim=0) if sign_method == "total" else torch.sign(sub).sum(dim=0)
    sign = score.ge_(0).mul_(2).sub_(1)  # +1 / -1 (a tie elects +1)
    y = sub.mul_(sign).relu_()  # |x_i| where x_i is nonzero and agrees, else 0
    res = _wsum(w, y).mul_(sign)  # sum over agreeing experts of w_i x_i
    if disjoint == "sum":
        return res
    agree = y.sign_()  # 1 where expert i agrees, else 0
    if disjoint == "count":
        return res.div_(agree.sum(dim=0).clamp_(min=1))
    denom = _wsum(w, agree)
    none = denom == 0
    return res.div_(denom.masked_fill_(none, 1.0)).masked_fill_(none, 0.0)


def band_rows_(work: torch.Tensor, density: float, drop_top: float) -> torch.Tensor:
    """Model Breadcrumbs on each row of ``work`` in place: :func:`~evomerge.merging.methods._select.band_mask`."""
    buf = torch.empty_like(work[0])
    for row in work:
        torch.abs(row, out=buf)
        row.mul_(band_mask(buf, density, drop_top))
    return work


def weighted_sum_(work: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i row_i`` (scales ``work`` in place)."""
    work.mul_(weights.view(-1, 1))
    return work.sum(dim=0)


def finish(out: torch.Tensor, lam: float, deltas: torch.Tensor) -> torch.Tensor:
    """Scale by ``lam`` (skipped at 1 so results stay bit-exact) and restore shape and dtype."""
    if lam != 1.0:
        out = out * lam
    return out.reshape(deltas.shape[1:]).to(deltas.dtype)


def default_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    """The given generator, or a fresh one seeded 0 on ``device`` (never the global RNG)."""
    if generator is not None:
        return generator
    g = torch.Generator(device=device)
    g.manual_seed(0)
    return g
