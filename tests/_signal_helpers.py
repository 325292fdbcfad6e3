"""Helpers of the interrupt tests: run an ``evomerge`` command as a real subprocess, signal the
driver alone at a chosen moment, and check what it left (exit code, one line, no traceback, no
process, no atomic writer's temporary file)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

PROGRAM = "import sys; from evomerge.cli import main; sys.exit(main())"  # as the `evomerge` script runs it
EXIT_WITHIN_S = 15.0  # a command's stop takes 0.1-5 s; the bound leaves room for a loaded machine


def start(*args: str) -> subprocess.Popen:
    """``evomerge ARGS`` in a new session (a signal reaches the driver only, as ``kill`` does)."""
    cmd = [sys.executable, "-c", PROGRAM, *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def interrupt(proc, sig, when, timeout=240.0, poll=0.05, group=False):
    """Wait until ``when(seen)`` (polled), send ``sig`` to the driver alone (``group``: to its
    whole process group, as ``timeout`` and job schedulers do); every descendant seen before the
    signal, and the seconds from the signal to the exit."""
    me = psutil.Process(proc.pid)
    seen: dict[int, psutil.Process] = {}
    t0 = time.monotonic()
    while True:
        assert proc.poll() is None, f"the run ended before the interrupt:\n{proc.stderr.read()}"
        assert time.monotonic() - t0 < timeout, "the moment to interrupt never came"
        try:
            children = me.children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        for c in children:
            if c.pid not in seen:
                seen[c.pid] = c
                c.seen_as = ""
            # its name while it runs, read again each poll: a child caught between fork and exec
            # (Ray's raylet, under load) still bears its parent's name the first time
            seen[c.pid].seen_as = name_of(seen[c.pid]) or seen[c.pid].seen_as
        if when(seen):
            break
        time.sleep(poll)
    (os.killpg if group else os.kill)(proc.pid, sig)  # start(): the driver leads its own group
    t1 = time.monotonic()
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return seen, time.monotonic() - t1, out, err


def alive(procs) -> list[str]:
    """Those of ``procs`` still running 5 s on (killed then, whatever the verdict)."""
    deadline = time.monotonic() + 5.0
    while True:
        left = []
        for p in procs.values():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{p.pid} {p.name()}")
            except psutil.NoSuchProcess:
                pass
        if not left or time.monotonic() > deadline:
            for p in procs.values():  # leave the machine clean whatever the verdict
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            return left


def check_stopped(proc, seen, seconds, err, code, out_dir) -> str:
    """The checks every interrupted command passes; returns its last stderr line."""
    lines = err.strip().splitlines()
    assert proc.returncode == code, err
    assert "Traceback" not in err, err
    assert seconds < EXIT_WITHIN_S, (seconds, err)
    assert alive(seen) == [], "processes of the run outlived it"
    assert lines and lines[-1].startswith("interrupted"), err
    if out_dir.exists():
        assert list(out_dir.rglob("*.tmp-*")) == [], "an atomic writer's temporary file was left"
    return lines[-1]


def has(name):
    return lambda seen: any(p.seen_as == name for p in seen.values())


def name_of(p) -> str:
    try:
        return p.name()
    except psutil.NoSuchProcess:
        return ""
