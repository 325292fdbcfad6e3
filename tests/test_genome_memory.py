"""The actor hands freed heap back before it scores (evomerge/distributed/heap.py): measured on
this process's resident heap (/proc/self/status), and scores unchanged by it."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import pytest

from evomerge.distributed.heap import release_free_heap

linux_glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "malloc_trim"),
    reason="malloc_trim is glibc's")


def _anon() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("RssAnon:"))


@linux_glibc
def test_release_returns_fragmented_free_heap():
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    n, size = 12_000, 8 * 1024  # 94 MiB in chunks under the mmap threshold: all in the heap
    ptrs = [libc.malloc(size) for _ in range(n)]
    for p in ptrs:
        ctypes.memset(p, 1, size)  # resident
    keep = ptrs[-1]  # the top chunk stays: free() alone cannot shrink the heap past it
    for p in ptrs[:-1]:
        libc.free(p)
    before = _anon()
    assert release_free_heap() is True
    after = _anon()
    libc.free(keep)
    assert before - after > 0.8 * n * size, (before, after)


def test_actor_releases_before_each_scoring_and_scores_are_unchanged(small_zoo, monkeypatch):
    """The actor releases free heap once per scored group, and its scores (validation rows of a
    GENOME-like sequence of rounds) equal, bit for bit, those of an actor that does not."""
    import evomerge.distributed.actors as A
    from evomerge.config import config_from_dict
    from evomerge.pipelines.inputs import prepare_inputs
    from evomerge.search import Recipe, expert_id

    names = list(small_zoo.tasks[:3])
    inputs = prepare_inputs(config_from_dict({"evaluation": {"max_samples": 8}}), experts=names, tasks=names)
    e0, e1, e2 = (expert_id(i) for i in range(3))
    rounds = [
        [Recipe("p1", "init_pair", (e0, e1), (0.3, 0.7), {"method": "linear"}, seed=1),
         Recipe("p2", "init_sum", (e0, e1, e2), (0.5, 0.5, 0.5), {}, seed=2),
         Recipe("p4", "init_merge", (e0, e1, e2), (1.0, 1.0, 1.0), {"method": "ties"}, seed=4)],
        [Recipe("c1", "crossover", ("p1", "p2"), (0.6, 0.4), {"method": "linear"}, seed=6),
         Recipe("c2", "mutate", ("p4",), (), {"sigma": 0.05, "gene_mut_rate": 0.3}, seed=7)],
    ]

    def run(release):
        monkeypatch.setattr(A, "release_free_heap", release)
        actor = A.PopulationActor(inputs.experts, inputs.evaluator, fan_in_fan_out=inputs.fan_in_fan_out,
                                  device="cpu")
        rows = [actor.materialize_and_evaluate([r.to_dict() for r in batch]) for batch in rounds]
        return rows + [actor.evaluate_keys(["p1", "c1", "c2", e0])]

    calls = []
    with_release = run(lambda: calls.append(1) or release_free_heap())
    without = run(lambda: False)
    assert len(calls) >= len(rounds) + 1
    assert [[(r.id, r.per_task, r.fitness) for r in rows] for rows in with_release] == \
        [[(r.id, r.per_task, r.fitness) for r in rows] for rows in without]
