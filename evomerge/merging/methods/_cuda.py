"""Fused GPU kernels (Triton) for the sparsifying merges: TIES, DARE-TIES, DARE-linear and
magnitude pruning on a CUDA device.

Why: with one torch op per step, every step is a pass over ``n x numel`` values, and exact top-k
selection costs many more (``kthvalue`` is ~50x slower than a copy on an H100). Here a TIES
merge reads the experts three times (DARE once), plus once more for the rows tied at their
threshold (kernels in :mod:`evomerge.merging.methods._cuda_kernels`):

1. ``bracket_count``: per row, how many ``|x|`` lie above a bracket ``[lo, hi]`` taken from a
   strided sample of the row, and how many inside it (about 1% of a large row).
2. ``bracket_gather``: the values inside the bracket, compacted as int64 keys
   ``row << 32 | float_bits(|x|)`` (non-negative floats order like their bits); one ``torch.sort``
   of all rows' keys then gives each row's exact k-th largest magnitude and its tie count.
3. ``sign_merge``: per column block, all experts at once: trim by the row thresholds (a tied
   row keeps its lowest-index ties, counted by ``tie_count``) or draw the DARE keep mask, elect
   the sign, and write the disjoint (or weighted) mean.

Semantics are those of :func:`evomerge.merging.methods._steps.sparse_sign_merge` with
``exact=False``; sums run in kernel order, so results equal the CPU path up to float rounding.
DARE's keep mask here is counter-based Philox (``rng="fast"`` on CUDA): coordinate ``(i, j)``
is kept when the first 32-bit output of Philox4x32-10 with key ``seed`` and counter
``(j, i, 0, 0)`` is ``< round(density * 2**32)``. It depends only on the seed, not on the
block size or launch order, but it is not the CPU's ``FastDareMask`` stream.

Used when the rows are on a CUDA device and Triton imports (it ships with CUDA builds of
torch); otherwise the torch path runs. Tests without a GPU run the same kernels on CPU tensors
through Triton's interpreter inside :func:`interpreted`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import importlib.util
import math
import os

import torch

from evomerge.merging.methods._select import bracket_positions, kth_largest_bracket

MAX_EXPERTS = 64  # the merge kernel keeps all experts of a column block in registers
_COUNT_BLOCK = 2048  # columns per program of the bracket kernels (1024-8192 measured within 10% on an H100)
_SAMPLE = 1 << 17  # strided sample per row that brackets the k-th magnitude (~1% of a big row inside)
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


_ON_CPU = contextvars.ContextVar("evomerge_kernels_on_cpu", default=False)


@contextlib.contextmanager
def interpreted(on: bool = True):
    """Inside (``on``): CPU tensors go through the kernels too, run by Triton's interpreter (tests
    without a GPU); ``TRITON_INTERPRET=1`` is set meanwhile. Triton decorates its standard library
    when it is first imported, so the first import must happen inside (see :func:`_kernels`).
    ``on=False``: the torch path everywhere but CUDA."""
    token = _ON_CPU.set(on)
    saved = os.environ.get("TRITON_INTERPRET")
    if on:
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield
    finally:
        _ON_CPU.reset(token)
        if saved is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved


def usable(rows: torch.Tensor) -> bool:
    """Whether the kernels can run on ``rows`` (``[n, numel]``, contiguous)."""
    if not (rows.device.type == "cuda" or (_ON_CPU.get() and rows.device.type == "cpu")):
        return False
    if rows.dtype not in _DTYPES or not rows.is_contiguous() or rows.shape[0] > MAX_EXPERTS:
        return False
    if rows.shape[1] >= 2**31 - _COUNT_BLOCK:
        return False
    return _has_triton()


@functools.cache
def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


DISJOINT_CODES = {"count": 0, "weighted": 1, "sum": 2}


def keep_threshold(density: float) -> int:
    """The 32-bit integer ``T`` with keep probability ``T / 2**32`` closest to ``density``."""
    return min(max(int(round(density * 2.0**32)), 1), 2**32 - 1)


def _kernels(interpret: bool = False) -> dict:
    """The Triton kernels, imported on first use: importing this module must not need Triton.
    ``interpret``: they must run under Triton's interpreter (CPU tensors, inside :func:`interpreted`)."""
    k = importlib.import_module("evomerge.merging.methods._cuda_kernels")
    if interpret and not interpreter_ready():
        raise RuntimeError("Triton was imported outside `interpreted()`: its kernels cannot run on CPU tensors here")
    return {"count": k.bracket_count, "gather": k.bracket_gather, "ties": k.tie_count, "merge": k.sign_merge}


def interpreter_ready() -> bool:
    """Whether Triton (imported now if it was not) and these kernels run under its interpreter."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    k = importlib.import_module("evomerge.merging.methods._cuda_kernels")
    return isinstance(tl.sum, InterpretedFunction) and isinstance(k.sign_merge, InterpretedFunction)


def row_thresholds(rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the exact ``k``-th largest ``|x|`` (float32) and how many entries are ``>=`` it
    (``1 <= k < numel``). Rows whose bracket misses (rare) are selected with ``kthvalue``."""
    import triton

    K = _kernels(rows.device.type == "cpu")
    n, numel = rows.shape
    dev = rows.device
    stride = max(1, numel // _SAMPLE)
    sample = torch.sort(rows[:, ::stride].float().abs(), dim=1).values
    i_lo, i_hi = bracket_positions(sample.shape[1], numel, k)
    lo, hi = sample[:, i_lo].contiguous(), sample[:, i_hi].contiguous()
    nblocks = triton.cdiv(numel, _COUNT_BLOCK)
    above = torch.empty((n, nblocks), dtype=torch.int32, device=dev)
    inside = torch.empty((n, nblocks), dtype=torch.int32, device=dev)
    K["count"][(nblocks, n)](rows, lo, hi, above, inside, numel, nblocks, BLOCK=_COUNT_BLOCK)
    inside_flat = inside.reshape(-1).to(torch.int64)
    offs = torch.cumsum(inside_flat, 0) - inside_flat
    n_above = above.sum(dim=1, dtype=torch.int64)
    n_in = inside.sum(dim=1, dtype=torch.int64)
    total = int(n_in.sum())
    keys = torch.empty(max(total, 1), dtype=torch.int64, device=dev)
    K["gather"][(nblocks, n)](rows, lo, hi, offs, keys, numel, nblocks, BLOCK=_COUNT_BLOCK)
    keys = torch.sort(keys[:total]).values
    seg_start = torch.cumsum(n_in, 0) - n_in
    r = k - n_above  # rank of the answer among the bracket's values, from the top
    ok = (r >= 1) & (r <= n_in)
    at = (seg_start + n_in - r).clamp_(0, max(total - 1, 0))
    kv = keys[at] if total else torch.zeros(n, dtype=torch.int64, device=dev)
    thr = (kv & 0xFFFFFFFF).to(torch.int32).view(torch.float32)
    first = torch.searchsorted(keys, kv) if total else torch.zeros_like(kv)
    n_ge = n_above + seg_start + n_in - first
    for i in torch.nonzero(~ok).flatten().tolist():
        v, c = kth_largest_bracket(rows[i].float().abs(), k)
        thr[i], n_ge[i] = v, c
    return thr, n_ge


def sign_merge(
    rows: torch.Tensor,
    weights: torch.Tensor,
    thresholds: torch.Tensor | None,
    dare: tuple[int, float] | None,
    sign_method: str | None,
    disjoint: str,
    topk: tuple[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The fused trim/drop + sign election + disjoint mean of ``rows`` (float32 ``[numel]``).

    ``thresholds``: per-row magnitude thresholds (keep ``|x| >= t``); with ``topk = (k, n_ge)``
    (from :func:`row_thresholds`) a row whose threshold ``t > 0`` is tied keeps exactly ``k``:
    everything above ``t`` and the lowest-index entries equal to it, as peft's top-k mask.
    ``dare``: ``(seed, density)``, keep by Philox draw and divide the result by ``density``.
    ``disjoint``: over the agreeing experts, ``count`` divides their weighted sum by their number,
    ``weighted`` by their weights' sum, ``sum`` not at all.
    """
    K = _kernels(rows.device.type == "cpu")
    n, numel = rows.shape
    n_pad = max(2, 1 << (n - 1).bit_length())
    block = max(32, 4096 // n_pad)
    nblocks = math.ceil(numel / block)
    dev = rows.device
    out = torch.empty(numel, dtype=torch.float32, device=dev)
    w = weights.to(device=dev, dtype=torch.float32).contiguous()
    thr = (thresholds if thresholds is not None else w).to(torch.float32).contiguous()  # unused without TRIM
    tie_offs, quota, ties = w, w, False  # placeholders unless a row is tied
    if thresholds is not None and topk is not None:
        k, n_ge = topk
        tied_rows = (n_ge > k) & (thr > 0)
        tied = torch.nonzero(tied_rows).flatten().to(torch.int32)
        if tied.numel():
            ties = True
            counts = torch.zeros((n, nblocks), dtype=torch.int32, device=dev)
            K["ties"][(nblocks, tied.numel())](rows, tied, thr, counts, numel, nblocks, BLOCK=block)
            tie_offs = (torch.cumsum(counts, dim=1, dtype=torch.int32) - counts).contiguous()
            above = n_ge - counts.sum(dim=1)  # entries strictly above the threshold
            quota = torch.where(tied_rows, k - above, numel).to(torch.int32).contiguous()
    seed, density = dare if dare is not None else (0, 1.0)
    sign = {None: 0, "frequency": 1, "total": 2}[sign_method]
    K["merge"][(nblocks,)](
        rows, w, thr, tie_offs, quota, out, n, numel, nblocks, int(seed) & (2**63 - 1),
        keep_threshold(density), 1.0 / density,
        N_PAD=n_pad, BLOCK=block, TRIM=thresholds is not None, TIES=ties, DARE=dare is not None,
        SIGN=sign, DISJOINT=DISJOINT_CODES[disjoint],
    )
    return out
