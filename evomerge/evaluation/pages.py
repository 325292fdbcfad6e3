"""Keep an evaluating process's freed memory mapped (glibc malloc settings), set in one place.

A forward pass allocates activation buffers of one to a few tens of MiB and frees them at the
end of the batch. With glibc's defaults these leave the process: the first ones are their own
``mmap`` (above the 128 KiB mmap threshold; the threshold then rises, but only as far as the
size of a freed mapping) and the rest are trimmed from the top of the heap once more than the
trim threshold is free. The next batch faults the same pages in again, zeroed by the kernel: on
the default zoo about 80,000 minor page faults per candidate, 0.14-0.24 s of system time of
0.63-0.80 s (docs/benchmarks.md, "Search against registry merges"). :func:`keep_freed_pages`
fixes the mmap threshold at 32 MiB (glibc's own ceiling for its moving one on 64-bit, so larger
blocks, e.g. weights at realistic model sizes, still get a mapping of their own and go back when
freed) and lets up to 128 MiB stay free at the top of the heap: the next batch reuses the same
pages. Which pages are resident is all it changes: no value (a buffer is written before it is
read; tests/test_eval_pages.py compares whole searches with and without it).

Called by every :class:`~evomerge.evaluation.evaluator.Evaluator`, so it holds in every process
that scores candidates (population actors, the scale run's cell workers, an in-process
benchmark). A population actor still hands its free pages back before each scored group
(:func:`evomerge.distributed.heap.release_free_heap`, its memory bound); the kept pages then serve
the group's batches after the first. ``EVOMERGE_KEEP_FREED_PAGES=0`` leaves glibc's defaults, as
does any ``MALLOC_*_`` threshold set in the environment (the user's own choice). A no-op where
the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import lru_cache

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # blocks at least this large get their own mapping (glibc's dynamic ceiling)
TRIM_THRESHOLD = 128 << 20  # free memory kept at the top of the heap before it is given back
ENV_SWITCH = "EVOMERGE_KEEP_FREED_PAGES"
USER_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


@lru_cache(maxsize=1)
def libc() -> ctypes.CDLL | None:
    """The C library when it is glibc (has ``mallopt`` and ``malloc_trim``), else None."""
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        lib.mallopt.argtypes, lib.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        lib.malloc_trim.argtypes, lib.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        return None
    return lib


@lru_cache(maxsize=1)
def keep_freed_pages() -> bool:
    """Set the thresholds once per process; True when they were set."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if any(v in os.environ for v in USER_ENV) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    lib = libc()
    if lib is None:
        return False
    mmap_set = lib.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    trim_set = lib.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return bool(mmap_set and trim_set)
