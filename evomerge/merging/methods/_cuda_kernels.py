"""Triton kernels of :mod:`evomerge.merging.methods._cuda` (imported only when they run)."""

import triton
import triton.language as tl


@triton.jit
def _abs_block(x_ptr, row, blk, numel, BLOCK: tl.constexpr):
    """``|x|`` (float32) of column block ``blk`` of ``row``, and which lanes are in range."""
    cols = blk * BLOCK + tl.arange(0, BLOCK)
    m = cols < numel
    return tl.abs(tl.load(x_ptr + row.to(tl.int64) * numel + cols, mask=m, other=0.0).to(tl.float32)), m


@triton.jit
def bracket_count(x_ptr, lo_ptr, hi_ptr, above_ptr, inside_ptr, numel, nblocks, BLOCK: tl.constexpr):
    # per (column block, row): how many |x| lie above the row's bracket, and how many inside it
    blk = tl.program_id(0)
    row = tl.program_id(1)
    a, m = _abs_block(x_ptr, row, blk, numel, BLOCK)
    lo = tl.load(lo_ptr + row)
    hi = tl.load(hi_ptr + row)
    tl.store(above_ptr + row * nblocks + blk, tl.sum((m & (a > hi)).to(tl.int32), axis=0))
    tl.store(inside_ptr + row * nblocks + blk, tl.sum((m & (a >= lo) & (a <= hi)).to(tl.int32), axis=0))


@triton.jit
def bracket_gather(x_ptr, lo_ptr, hi_ptr, offs_ptr, keys_ptr, numel, nblocks, BLOCK: tl.constexpr):
    # the bracket's values as sortable keys row << 32 | float bits, at the offsets bracket_count implies
    blk = tl.program_id(0)
    row = tl.program_id(1)
    a, m = _abs_block(x_ptr, row, blk, numel, BLOCK)
    sel = m & (a >= tl.load(lo_ptr + row)) & (a <= tl.load(hi_ptr + row))
    pos = tl.load(offs_ptr + row * nblocks + blk) + tl.cumsum(sel.to(tl.int32), axis=0) - 1
    key = (row.to(tl.int64) << 32) | a.to(tl.int32, bitcast=True).to(tl.int64)
    tl.store(keys_ptr + pos, key, mask=sel)


@triton.jit
def tie_count(x_ptr, rows_ptr, thr_ptr, counts_ptr, numel, nblocks, BLOCK: tl.constexpr):
    # per (column block, listed row): how many |x| equal the row's threshold
    blk = tl.program_id(0)
    row = tl.load(rows_ptr + tl.program_id(1))
    a, m = _abs_block(x_ptr, row, blk, numel, BLOCK)
    tl.store(counts_ptr + row * nblocks + blk, tl.sum((m & (a == tl.load(thr_ptr + row))).to(tl.int32), axis=0))


@triton.jit
def sign_merge(x_ptr, w_ptr, thr_ptr, tie_offs_ptr, quota_ptr, out_ptr, n, numel, nblocks, seed, keep_t, out_scale,
               N_PAD: tl.constexpr, BLOCK: tl.constexpr, TRIM: tl.constexpr, TIES: tl.constexpr,
               DARE: tl.constexpr, SIGN: tl.constexpr, DISJOINT: tl.constexpr):
    # SIGN: 0 = no election (weighted sum), 1 = frequency (sum of signs), 2 = total (sum of values)
    # DISJOINT (with a sign): 0 = divide by the agreeing count, 1 = by their weights' sum, 2 = no division
    blk = tl.program_id(0)
    r = tl.arange(0, N_PAD)
    c = blk * BLOCK + tl.arange(0, BLOCK)
    rm = r < n
    cm = c < numel
    m2 = rm[:, None] & cm[None, :]
    x = tl.load(x_ptr + r[:, None].to(tl.int64) * numel + c[None, :], mask=m2, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + r, mask=rm, other=0.0)
    if TRIM:
        thr = tl.load(thr_ptr + r, mask=rm, other=0.0)
        ax = tl.abs(x)
        if TIES:
            # exactly k per row: of the entries equal to the threshold, the lowest-index `quota`
            eq = m2 & (ax == thr[:, None])
            offs = tl.load(tie_offs_ptr + r * nblocks + blk, mask=rm, other=0)
            rank = offs[:, None] + tl.cumsum(eq.to(tl.int32), axis=1) - 1
            quota = tl.load(quota_ptr + r, mask=rm, other=0)
            keep = (ax > thr[:, None]) | (eq & (rank < quota[:, None]))
        else:
            keep = ax >= thr[:, None]
        x = tl.where(keep, x, 0.0)
    if DARE:
        zero = tl.zeros([N_PAD, BLOCK], dtype=tl.uint32)
        c0 = (c[None, :] + zero.to(tl.int32)).to(tl.uint32, bitcast=True)
        c1 = (r[:, None] + zero.to(tl.int32)).to(tl.uint32, bitcast=True)
        u, _, _, _ = tl.philox(seed, c0, c1, zero, zero)
        x = tl.where(u.to(tl.int64) < keep_t, x, 0.0)
    if SIGN == 0:
        res = tl.sum(x * w[:, None], axis=0)
    else:
        if SIGN == 2:
            score = tl.sum(x, axis=0)
        else:
            score = tl.sum((x > 0).to(tl.float32) - (x < 0).to(tl.float32), axis=0)
        s = tl.where(score >= 0, 1.0, -1.0)
        agree = (x * s[None, :]) > 0
        res = tl.sum(tl.where(agree, x * w[:, None], 0.0), axis=0)
        if DISJOINT == 1:
            den = tl.sum(tl.where(agree, w[:, None] + tl.zeros_like(x), 0.0), axis=0)
            res = tl.where(den == 0, 0.0, res / tl.where(den == 0, 1.0, den))
        elif DISJOINT == 0:
            den = tl.sum(agree.to(tl.float32), axis=0)
            res = res / tl.maximum(den, 1.0)
    tl.store(out_ptr + c, res * out_scale, mask=cm)
