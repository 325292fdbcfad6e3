"""Small building blocks shared by the operators: weights, exact top-k trimming, DARE drop,
sign election and disjoint mean. All work on a private working copy ``[n, numel]``; nothing
here touches a caller's tensor in place.

Semantics follow ``peft.utils.merge_utils`` where peft has the same step (so results can be
compared bit for bit on CPU): ``k = int(density * numel)`` values are kept by magnitude; DARE
keeps a coordinate when a uniform draw is ``< density`` (the draw ``torch.bernoulli`` makes),
one tensor after another from the same generator; the sign is elected on the *unweighted*
sparsified tensors and weights multiply afterwards; the disjoint mean divides by the number of
experts that agree with the elected sign (not by their weights).

Two evomerge options change those semantics on purpose (see :func:`sparse_sign_merge`,
:class:`FastDareMask`): ``disjoint="weighted"`` divides by the agreeing *weights*, and the
``rng="fast"`` DARE mask draws 8 bits per coordinate from a numpy PCG64 stream instead of a
``torch.rand`` float (same distribution, different draws, several times cheaper).
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch

from evomerge.errors import ConfigError
from evomerge.merging.methods import _cuda

_SAMPLE = 32768  # size of the strided sample that brackets the k-th magnitude
_CHUNK_ELEMS_CPU = 1 << 18  # column block (all experts) processed at once: fits in cache
_CHUNK_ELEMS_GPU = 1 << 26


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half precision is merged in float32 and cast back at the end."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


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


def keep_count(density: float, numel: int) -> int:
    """Number of values a magnitude trim keeps (peft's rule)."""
    return int(density * numel)


def kth_largest(a: torch.Tensor, k: int) -> tuple[torch.Tensor, int]:
    """Exact ``k``-th largest value ``v`` of the non-negative 1-D tensor ``a``
    (``1 <= k <= a.numel()``) and the number of entries ``>= v``.

    CPU: ``numpy.partition`` (introselect, linear time; ~15x faster than ``torch.kthvalue`` and
    ~15x faster than ``torch.topk`` on a 2048x2048 tensor). Other devices: a strided sample
    brackets the answer, the entries inside the bracket (about 1%) are compacted and selected
    exactly with ``kthvalue``; falls back to ``kthvalue`` on everything when the bracket misses.
    """
    if a.device.type == "cpu" and a.dtype in (torch.float32, torch.float64):
        return kth_largest_numpy(a, k)
    return kth_largest_bracket(a, k)


def kth_largest_numpy(a: torch.Tensor, k: int) -> tuple[torch.Tensor, int]:
    """:func:`kth_largest` for CPU tensors via ``numpy.partition`` (zero-copy view)."""
    arr = a.detach().numpy()
    big_n = arr.size
    v = arr.dtype.type(np.partition(arr, big_n - k)[big_n - k])
    return torch.tensor(v, dtype=a.dtype), int(np.count_nonzero(arr >= v))


def kth_largest_bracket(a: torch.Tensor, k: int) -> tuple[torch.Tensor, int]:
    """:func:`kth_largest` with torch ops only (any device)."""
    big_n = a.numel()
    if big_n > 4 * _SAMPLE:
        stride = big_n // _SAMPLE
        sample = torch.sort(a[::stride]).values
        i_lo, i_hi = bracket_positions(sample.numel(), big_n, k)
        lo, hi = sample[i_lo], sample[i_hi]
        found = _select_in_bracket(a, k, lo, hi)
        if found is not None:
            return found
    v = torch.kthvalue(a, big_n - k + 1).values
    return v, int(torch.count_nonzero(a >= v))


def bracket_positions(m: int, numel: int, k: int) -> tuple[int, int]:
    """Positions in a sorted strided sample of ``m`` of ``numel`` values whose entries bracket
    the ``k``-th largest value: its expected sample rank, give or take 5 binomial standard
    deviations plus 32."""
    q = (numel - k) / numel  # fraction of values below the answer
    margin = 5.0 * math.sqrt(m * q * (1.0 - q)) + 32.0
    return max(0, int(q * m - margin)), min(m - 1, int(q * m + margin))


def _select_in_bracket(a: torch.Tensor, k: int, lo: torch.Tensor, hi: torch.Tensor):
    n_above = int(torch.count_nonzero(a > hi))
    inside = a[torch.logical_and(a >= lo, a <= hi)]
    r = k - n_above
    if not 1 <= r <= inside.numel():
        return None
    v = torch.kthvalue(inside, inside.numel() - r + 1).values
    return v, n_above + int(torch.count_nonzero(inside >= v))


def topk_mask(a: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of exactly ``k`` largest entries of the 1-D ``a`` (ties: lowest index first)."""
    big_n = a.numel()
    if k <= 0:
        return torch.zeros_like(a, dtype=torch.bool)
    if k >= big_n:
        return torch.ones_like(a, dtype=torch.bool)
    v, n_ge = kth_largest(a, k)
    keep = a >= v
    if n_ge > k:  # values equal to the threshold: drop the last ones
        ties = torch.nonzero(a == v).flatten()
        keep[ties[ties.numel() - (n_ge - k) :]] = False
    return keep


class RowKeep:
    """Which coordinates each expert keeps: ``|x_i| >= thresholds[i]``, or an explicit mask
    for rows listed in ``masks`` (threshold ties, or DARE draws); survivors are divided by ``divisor``.

    ``block_mask`` (fast DARE) yields the float 0/1 mask of each column block, in column order;
    ``out_divisor`` divides the merged block instead of every survivor (one pass over ``[numel]``
    instead of ``[n, numel]``; equal up to float rounding). ``dare`` (``(seed, density)``) is the
    GPU kernel's own DARE draw (:mod:`evomerge.merging.methods._cuda`).
    """

    def __init__(
        self,
        thresholds: torch.Tensor | None,
        masks: dict[int, torch.Tensor] | None = None,
        divisor: float = 1.0,
        mask_matrix: torch.Tensor | None = None,
        block_mask: "FastDareMask | None" = None,
        out_divisor: float = 1.0,
        dare: tuple[int, float] | None = None,
        topk: tuple[int, torch.Tensor] | None = None,
    ):
        self.thresholds = thresholds
        self.masks = masks or {}
        self.divisor = divisor
        self.mask_matrix = mask_matrix  # [n, numel] float 0/1 for all rows at once (DARE)
        self.block_mask = block_mask
        self.out_divisor = out_divisor
        self.dare = dare  # (seed, density): the GPU kernel draws the keep mask itself
        self.topk = topk  # (k, entries >= threshold per row): the GPU kernel resolves threshold ties

    def kernel_ready(self) -> bool:
        """Only per-row thresholds or an in-kernel DARE draw: what the fused GPU kernel takes."""
        return not self.masks and self.mask_matrix is None and self.block_mask is None and self.divisor == 1.0

    def load(self, rows: torch.Tensor, c0: int, c1: int, buf: torch.Tensor) -> torch.Tensor:
        """The sparsified private copy of ``rows[:, c0:c1]``, written into ``buf`` (same shape)."""
        if self.block_mask is not None:  # copy and mask in one pass
            return torch.mul(rows[:, c0:c1], self.block_mask.block(c0, c1, buf.device), out=buf)
        buf.copy_(rows[:, c0:c1])
        return self.apply_(buf, c0, c1)

    def apply_(self, sub: torch.Tensor, c0: int, c1: int) -> torch.Tensor:
        """Sparsify the column block ``sub = rows[:, c0:c1]`` in place.

        Masks are float 0/1 tensors: on CPU, bool-producing comparisons and bool multiplies
        on 2-D blocks are several times slower than their in-place float forms.
        """
        if self.thresholds is not None:
            sub.mul_(sub.abs().ge_(self.thresholds.view(-1, 1)))
        if self.mask_matrix is not None:
            sub.mul_(self.mask_matrix[:, c0:c1])
        for i, m in self.masks.items():
            sub[i].mul_(m[c0:c1])
        if self.divisor != 1.0:
            sub.div_(self.divisor)
        return sub


def magnitude_keep(rows: torch.Tensor, density: float) -> RowKeep | None:
    """Per-row exact top-``k`` magnitude thresholds (``None``: keep everything)."""
    n, numel = rows.shape
    k = keep_count(density, numel)
    if density >= 1 or k >= numel:
        return None
    if k >= 1 and _cuda.usable(rows):
        return _kernel_magnitude_keep(rows, k)
    buf = torch.empty(numel, dtype=compute_dtype(rows.dtype), device=rows.device)
    thresholds = torch.empty(n, dtype=buf.dtype, device=rows.device)
    masks: dict[int, torch.Tensor] = {}
    for i in range(n):
        if rows.dtype == buf.dtype:
            torch.abs(rows[i], out=buf)
        else:
            buf.copy_(rows[i]).abs_()
        if k == 0:
            masks[i] = torch.zeros(numel, dtype=buf.dtype, device=rows.device)
            thresholds[i] = 0.0
            continue
        v, n_ge = kth_largest(buf, k)
        thresholds[i] = v
        if n_ge > k:
            thresholds[i] = 0.0
            masks[i] = topk_mask(buf, k).to(buf.dtype)
    return RowKeep(thresholds, masks)


def _kernel_magnitude_keep(rows: torch.Tensor, k: int) -> RowKeep:
    """:func:`magnitude_keep` with the GPU kernels' batched exact selection. The merge kernel
    resolves a tie at the threshold ``v > 0`` itself (lowest index first); a tie at ``v = 0``
    needs nothing (the row has fewer than ``k`` nonzeros, and keeping zeros changes nothing)."""
    thresholds, n_ge = _cuda.row_thresholds(rows, k)
    return RowKeep(thresholds, topk=(k, n_ge))


def dare_keep(rows: torch.Tensor, density: float, generator: torch.Generator, rng: str = "peft") -> RowKeep | None:
    """DARE: keep each coordinate with probability ``density``; survivors are divided by it.

    ``rng="peft"``: row ``i`` draws ``numel`` uniforms from ``generator`` after row ``i-1``; a
    coordinate survives when its draw is ``< density``. This is the draw ``torch.bernoulli``
    makes on CPU, so seeding the global RNG with the generator's seed reproduces peft's masks
    (costs one float32 uniform per coordinate and a full ``[n, numel]`` mask).
    ``rng="fast"``: :class:`FastDareMask`, seeded by ``generator.initial_seed()`` (so the same
    seed gives the same mask on every CPU, and on CUDA without Triton; give each tensor its own
    seeded generator, as :func:`~evomerge.merging.types.key_generator` does), drawn block by
    block (no full-size mask).
    Where the GPU kernels run (:func:`evomerge.merging.methods._cuda.usable`), ``"fast"`` is
    their in-kernel Philox draw instead: same keep probability and seed, different stream.
    """
    if density >= 1:
        return None
    n, numel = rows.shape
    if rng == "fast":
        if _cuda.usable(rows):
            return RowKeep(None, dare=(generator.initial_seed(), density))
        return RowKeep(None, block_mask=FastDareMask(n, numel, density, generator.initial_seed()), out_divisor=density)
    dtype = compute_dtype(rows.dtype)
    draws = torch.empty((n, numel), dtype=dtype, device=rows.device)
    for i in range(n):  # row after row, as peft draws one tensor after another
        torch.rand(numel, dtype=dtype, device=rows.device, generator=generator, out=draws[i])
    return RowKeep(None, divisor=density, mask_matrix=draws.lt_(density))


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 output function (a strong 64-bit mixer) on a uint64 array."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class FastDareMask:
    """DARE keep-masks from 8 random bits per coordinate, with the exact 32-bit keep probability.

    Semantics: coordinate ``j`` of row ``i`` is kept when a uniform 32-bit integer
    ``u = (b << 24) | r`` is ``< T = round(density * 2**32)``, independently for every coordinate,
    so the keep probability is ``T / 2**32`` (within ``2**-33`` of ``density``; exact for any
    density that is a multiple of ``2**-32``). Only the top byte ``b`` is drawn for every
    coordinate; ``r`` is needed only when ``b`` equals the top byte of ``T`` (probability 1/256)
    and is then computed at that position.

    Streams: ``b`` of coordinate ``(i, j)`` is byte ``j % 8`` (little-endian) of word
    ``(j // 8) * n + i`` of one PCG64 stream seeded ``SeedSequence(seed, spawn_key=(0,))`` (column
    groups of 8 for all rows, then the next group: consecutive column blocks read consecutive
    words); ``r`` is the top 24 bits of ``splitmix64(key + (i * numel + j + 1) * golden)`` with
    ``key`` from ``SeedSequence(seed, spawn_key=(1,))``. So the mask depends only on ``(seed, n,
    numel, density)``: not on the device, the dtype, the column block size (any multiple of 8),
    the order blocks are drawn in, or the generator's state.
    """

    def __init__(self, n: int, numel: int, density: float, seed: int):
        t = min(max(int(round(density * 2.0**32)), 1), 2**32 - 1)
        self.t_hi, self.t_lo = t >> 24, t & 0xFFFFFF
        self.n, self.numel = n, numel
        self.stream = np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=(0,)))
        self.key = np.random.SeedSequence(int(seed), spawn_key=(1,)).generate_state(1, np.uint64)
        self._pos = 0  # words drawn from ``stream`` so far

    def _read(self, word: int, count: int) -> np.ndarray:
        if word != self._pos:  # blocks out of order: jump (the LCG's period makes backwards work too)
            self.stream.advance((word - self._pos) % (1 << 128))
        self._pos = word + count
        raw = self.stream.random_raw(count)
        return raw.byteswap() if sys.byteorder != "little" else raw

    def top_bytes(self, c0: int, c1: int) -> np.ndarray:
        """The top bytes ``b`` of columns ``c0:c1`` (``[n, c1 - c0]`` uint8); ``c0`` a multiple of 8."""
        if c0 % 8 or not 0 <= c0 < c1 <= self.numel:
            raise ValueError(f"FastDareMask: column block {c0}:{c1} must start at a multiple of 8 inside [0, {self.numel}]")
        g0, g1 = c0 // 8, (c1 + 7) // 8
        raw = self._read(g0 * self.n, (g1 - g0) * self.n).reshape(g1 - g0, self.n)
        b = np.ascontiguousarray(raw.T).view(np.uint8)  # [n, 8 * groups]
        return b if b.shape[1] == c1 - c0 else b[:, : c1 - c0]

    def low_bits(self, flat_index: np.ndarray) -> np.ndarray:
        """``r`` (24 bits, as uint64) at the given flat coordinates ``i * numel + j``."""
        with np.errstate(over="ignore"):
            z = self.key + (flat_index.astype(np.uint64) + np.uint64(1)) * _GOLDEN
        return _splitmix64(z) >> np.uint64(40)

    def block(self, c0: int, c1: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Float32 0/1 keep mask of columns ``c0:c1`` (``[n, c1 - c0]``) on ``device``."""
        b = self.top_bytes(c0, c1)
        keep = np.less(b, np.uint8(self.t_hi))
        if self.t_lo:
            flat = np.flatnonzero(b == np.uint8(self.t_hi))  # 2-D np.nonzero is ~20x slower
            if flat.size:
                ri, cj = np.divmod(flat, b.shape[1])
                keep.reshape(-1)[flat] = self.low_bits(ri * self.numel + cj + c0) < np.uint64(self.t_lo)
        return torch.from_numpy(keep.astype(np.float32)).to(device)


def _chunk_cols(rows: torch.Tensor) -> int:
    budget = _CHUNK_ELEMS_CPU if rows.device.type == "cpu" else _CHUNK_ELEMS_GPU
    return max(1024, budget // rows.shape[0]) // 64 * 64  # a multiple of 8 (FastDareMask words)


def _seq_sum(sub: torch.Tensor) -> torch.Tensor:
    # expert after expert, the order torch.sum(dim=0) uses on large stacks (bit-compatible with peft there)
    acc = sub[0].clone()
    for r in sub[1:]:
        acc += r
    return acc


DISJOINT_MODES = ("count", "weighted")


def sparse_sign_merge(
    rows: torch.Tensor,
    weights: torch.Tensor,
    keep: RowKeep | None,
    sign_method: str | None,
    disjoint: str = "count",
    exact: bool = True,
) -> torch.Tensor:
    """Sparsify each row, then either elect signs and take the disjoint mean
    (``sign_method`` given) or take the weighted sum (``sign_method=None``).

    The sign is elected on the unweighted sparsified rows. Disjoint mean at each coordinate,
    over the experts ``A`` whose value is nonzero and has the elected sign:
    ``disjoint="count"`` (peft): ``sum_{i in A} w_i x_i / max(|A|, 1)``;
    ``disjoint="weighted"``: ``sum_{i in A} w_i x_i / sum_{i in A} w_i``, and 0 where that
    denominator is 0 (no expert agrees, or their weights cancel).

    Works block by block over columns on a private copy of the block, so it never
    materialises a full ``[n, numel]`` temporary and never writes to ``rows``.
    ``exact=True`` sums expert after expert in peft's order (bit-identical results);
    ``exact=False`` uses fewer passes (weighted sums as one matrix-vector product, the agreeing
    values as ``relu(sign * x)``): the same maths, different float rounding. On a CUDA device
    with Triton the fused kernel of :mod:`evomerge.merging.methods._cuda` runs instead (one read
    of the experts; ``exact`` does not apply: GPU sums are never in peft's order).
    """
    if disjoint not in DISJOINT_MODES:
        raise ConfigError(f"`disjoint` must be one of {list(DISJOINT_MODES)}. Got {disjoint!r} instead.")
    if _cuda.usable(rows) and (keep is None or keep.kernel_ready()):
        if keep is None:
            return _cuda.sign_merge(rows, weights, None, None, sign_method, disjoint)
        return _cuda.sign_merge(rows, weights, keep.thresholds, keep.dare, sign_method, disjoint, keep.topk)
    n, numel = rows.shape
    dtype = compute_dtype(rows.dtype)
    out = torch.empty(numel, dtype=dtype, device=rows.device)
    step = _chunk_cols(rows)
    work = torch.empty(n * min(step, numel), dtype=dtype, device=rows.device)
    w = weights.view(-1, 1)
    for c0 in range(0, numel, step):
        c1 = min(numel, c0 + step)
        buf = work[: n * (c1 - c0)].view(n, c1 - c0)
        if keep is None:
            sub = buf.copy_(rows[:, c0:c1])
        else:
            sub = keep.load(rows, c0, c1, buf)
        if not exact:
            res = _fast_block(sub, w, sign_method, disjoint)
        elif sign_method is None:
            res = _seq_sum(sub.mul_(w))
        else:
            score = _seq_sum(sub) if sign_method == "total" else _seq_sum(torch.sign(sub))
            sign = score.ge_(0).mul_(2).sub_(1)  # +1 / -1 (a tie elects +1)
            agree = torch.mul(sub, sign).gt_(0)  # float 0/1: nonzero and agreeing
            if disjoint == "count":
                denom = agree.sum(dim=0).clamp_(min=1)
                res = _seq_sum(sub.mul_(w).mul_(agree)).div_(denom)
            else:
                agree.mul_(w)  # w_i where expert i agrees, else 0
                denom = _seq_sum(agree)
                none = denom == 0
                res = _seq_sum(sub.mul_(agree)).div_(denom.masked_fill_(none, 1.0)).masked_fill_(none, 0.0)
        if keep is not None and keep.out_divisor != 1.0:
            res.div_(keep.out_divisor)
        out[c0:c1] = res
    return out


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
    agree = y.sign_()  # 1 where expert i agrees, else 0
    if disjoint == "count":
        return res.div_(agree.sum(dim=0).clamp_(min=1))
    denom = _wsum(w, agree)
    none = denom == 0
    return res.div_(denom.masked_fill_(none, 1.0)).masked_fill_(none, 0.0)


def band_rows_(work: torch.Tensor, density: float, drop_top: float) -> torch.Tensor:
    """Zero the top ``drop_top`` fraction by magnitude and everything below the next ``density``."""
    numel = work.shape[1]
    k_top = keep_count(drop_top, numel)
    k_all = min(numel, keep_count(drop_top + density, numel))
    buf = torch.empty_like(work[0])
    for row in work:
        torch.abs(row, out=buf)
        keep = topk_mask(buf, k_all)
        if k_top > 0:
            keep &= ~topk_mask(buf, k_top)
        row.mul_(keep)
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
