"""Hand freed heap back to the operating system before a memory peak.

glibc's malloc keeps freed chunks in its arenas (the main heap and one per thread that
allocated) and returns them to the system only from the top of the main heap, past a threshold.
What an actor freed between evaluations (rebuilt individuals, Ray's deserialised arguments,
the last batch's activations, freed from other threads' arenas) so stays resident, by a varying
amount, under the next evaluation's own peak: at 50M the GENOME actor's own peak moved by about
45 MiB of heap from run to run (docs/benchmarks.md, "GENOME's heap noise"). ``malloc_trim(0)``
returns every free page of every arena (``madvise(MADV_DONTNEED)``); it changes no value, only
which pages are resident, and costs a few milliseconds. The pages an evaluator keeps for its next
batches (:mod:`evomerge.evaluation.pages`) go too: the group's first batch faults them in again.
"""

from __future__ import annotations

from evomerge.evaluation.pages import libc


def release_free_heap() -> bool:
    """Return the process's free heap pages to the system; False where malloc has no trim."""
    lib = libc()
    if lib is None:
        return False
    lib.malloc_trim(0)
    return True
