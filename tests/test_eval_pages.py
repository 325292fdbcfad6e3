"""``evomerge.evaluation.pages``: a process that scores candidates keeps its freed pages mapped.

What the setting changes is which pages stay resident, never a value: a whole search in a process
with it and one without return the same individuals and scores. Each run is its own process
(glibc's settings hold for the process and cannot be undone)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evomerge.evaluation.pages import ENV_SWITCH, USER_ENV, libc

ROOT = Path(__file__).resolve().parents[1]
glibc_only = pytest.mark.skipif(libc() is None, reason="the C library is not glibc")


def _env(keep: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in USER_ENV}
    env[ENV_SWITCH] = keep
    return env


# a 24 MiB block written, freed and made again (glibc's malloc, through ctypes): the faults of the
# later rounds are pages that went back to the kernel on free. With glibc's defaults the first
# block is a mapping of its own (above the 128 KiB threshold), unmapped on free; the second lands
# on fresh heap; only from the third on does glibc's moving threshold keep it
_ROUNDS = """
import ctypes, resource
from evomerge.evaluation.pages import keep_freed_pages, libc
kept = keep_freed_pages()
lib = libc()
lib.malloc.restype, lib.malloc.argtypes, lib.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
faults = []
for _ in range(4):
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = lib.malloc(24 << 20)
    ctypes.memset(p, 1, 24 << 20)
    lib.free(p)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
print(kept, *faults)
"""


def _rounds(keep: str) -> tuple[bool, list[int]]:
    out = subprocess.run([sys.executable, "-c", _ROUNDS], env=_env(keep), capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    return out[0] == "True", [int(x) for x in out[1:]]


@glibc_only
def test_freed_block_is_not_faulted_in_again():
    pages = (24 << 20) // os.sysconf("SC_PAGE_SIZE")
    kept, faults = _rounds("1")
    assert kept
    assert faults[0] >= pages * 0.9  # the first round touches fresh pages
    assert max(faults[1:]) < pages * 0.05  # the freed block stayed mapped: reused without faults
    default, faults = _rounds("0")
    assert not default
    assert faults[1] >= pages * 0.9  # glibc's defaults: handed back, faulted in again


def test_user_malloc_settings_are_left_alone():
    env = {**_env("1"), "MALLOC_TRIM_THRESHOLD_": "131072"}
    code = "from evomerge.evaluation.pages import keep_freed_pages; print(keep_freed_pages())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"


@pytest.mark.slow  # two search processes: about 13 s alone, 25 s on a busy machine
@glibc_only
def test_search_is_the_same_with_and_without_kept_pages(small_zoo, tmp_path):
    """GENOME (2 generations) and Model Swarms (1 iteration) on the small zoo, through the
    benchmark's in-process search (the actor's trim before each group included): every
    individual's validation fitness, the chosen individual and its test score are equal, bit for
    bit, with and without the setting (the default zoo's k = 10 searches: docs/benchmarks.md)."""
    procs = {}
    for keep in ("1", "0"):  # the two processes side by side (wall time: one search)
        raw = tmp_path / f"raw{keep}.json"
        procs[keep] = (raw, subprocess.Popen(
            [sys.executable, str(ROOT / "benchmarks" / "search_vs_merge.py"), "--zoo-dir", str(small_zoo.root),
             "--k", "2", "--seeds", "0", "--methods", "--variant", 'genome_q={"generations": 2}',
             "--variant", 'swarm_q={"max_iter": 1}', "--no-merges", "--trim",
             "--targets", "union", "--raw", str(raw)],
            env=_env(keep), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    runs = {}
    for keep, (raw, proc) in procs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
        runs[keep] = {r["method"]: r for r in json.loads(raw.read_text())["rows"]}
    assert set(runs["1"]) == set(runs["0"]) >= {"genome_q", "swarm_q"}
    for m in ("genome_q", "swarm_q"):
        kept, default = runs["1"][m], runs["0"][m]
        assert kept["keep_freed_pages"] and not default["keep_freed_pages"]
        assert len(kept["fitness"]) == kept["evals"] > 4
        for key in ("fitness", "best_id", "validation", "test", "evals"):
            assert kept[key] == default[key], (m, key)
