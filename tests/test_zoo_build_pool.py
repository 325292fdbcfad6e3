"""The zoo build's forked training jobs (:func:`evomerge.zoo.forked.run_forked`): the results of
the jobs in their order, a job's error raised with its traceback, a dead job named, and every
process ended however the call ends. Under an interrupt that lands while a job's process is
forked, or while another thread holds the signal, the exception reaches the caller with every
process owned and ended (before, with a multiprocessing Pool, a SIGTERM inside ``Pool()`` left
a worker behind for good, and a SIGINT waited 20 s for the experts to finish;
docs/benchmarks.md)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from evomerge.zoo.forked import RemoteTraceback, run_forked

psutil = pytest.importorskip("psutil")


def _square_after(job):
    value, nap = job
    time.sleep(nap)
    return value * value, os.getpid()


def _alive_children():
    return [p.pid for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]


def test_results_come_back_in_the_jobs_order_each_from_its_own_process():
    jobs = [(3, 0.3), (-2, 0.0), (5, 0.1), (7, 0.0), (1, 0.2)]  # later jobs finish first
    got = run_forked(_square_after, jobs, 2)
    assert [v for v, _ in got] == [9, 4, 25, 49, 1]
    pids = {pid for _, pid in got}
    assert len(pids) == len(jobs) and os.getpid() not in pids
    assert _alive_children() == []


def _fail_on(job):
    if job == "bad":
        raise ValueError("bad job's own message")
    time.sleep(30 if job == "slow" else 0)
    return job


def test_a_jobs_error_is_raised_with_its_traceback_and_the_others_are_ended():
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="bad job's own message") as got:
        run_forked(_fail_on, ["slow", "bad", "ok"], 2)
    assert time.monotonic() - t0 < 10  # the slow one was ended, not waited for
    cause = got.value.__cause__
    assert isinstance(cause, RemoteTraceback) and "in _fail_on" in str(cause)
    assert _alive_children() == []


def _die(job):
    os._exit(3)


def test_a_process_that_dies_without_a_result_is_named():
    with pytest.raises(ChildProcessError, match=r"job 'x': its process ended without a result \(exit code 3\)"):
        run_forked(_die, ["x"], 1)


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match="workers must be >= 1"):
        run_forked(_die, ["x"], 0)


# a child process: the signal is sent inside a job process's start (the fork context's Process,
# which run_forked uses) or while the parent waits, with another thread alive as torch's are in a
# build (the kernel may hand that thread the signal: Python then runs the handler in the main
# thread, but only once the main thread runs Python code again)
CHILD = textwrap.dedent("""
    import multiprocessing as mp, os, signal, sys, threading, time
    import psutil
    from evomerge.interrupts import stop_on_signals
    from evomerge.zoo.forked import run_forked

    sig, moment = getattr(signal, sys.argv[1]), sys.argv[2]
    ctx = mp.get_context("fork")
    Plain = ctx.Process

    class HitWhileStarting(Plain):
        def start(self):
            super().start()
            os.kill(os.getpid(), sig)
            time.sleep(0.5)  # the handler runs here unless the signal is held back

    other = threading.Thread(target=time.sleep, args=(60,), daemon=True)
    other.start()
    if moment == "start":
        ctx.Process = HitWhileStarting
    else:  # while the parent waits, 1 s in: to the other thread, as the kernel may choose
        threading.Timer(1.0, signal.pthread_kill, (other.ident, sig)).start()
    with stop_on_signals():
        t0 = time.monotonic()
        try:
            run_forked(time.sleep, [30, 30, 30], 2)
        except KeyboardInterrupt as e:
            alive = [p.pid for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
            print(type(e).__name__, "alive:", alive, "seconds:", time.monotonic() - t0, flush=True)
""")


@pytest.mark.parametrize("moment", ["start", "wait"])
@pytest.mark.parametrize("sig,raised", [("SIGTERM", "Terminated"), ("SIGINT", "KeyboardInterrupt")])
def test_a_signal_ends_every_job_process_at_once(sig, raised, moment):
    proc = subprocess.run([sys.executable, "-c", CHILD, sig, moment], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{raised} alive: [] seconds: "), proc.stdout + proc.stderr
    assert float(lines[0].rsplit(" ", 1)[1]) < 3.0  # the jobs sleep 30 s: ended, not waited for
