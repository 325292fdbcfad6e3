"""DARE's fast keep mask (``rng="fast"`` on CPU, and on CUDA without Triton)."""

from __future__ import annotations

import sys

import numpy as np
import torch

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
