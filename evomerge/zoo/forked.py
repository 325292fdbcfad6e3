"""Run independent jobs in forked processes, at most ``workers`` at a time, and end every one of
them however the call ends (a job's error, Ctrl-C, SIGTERM).

Why not :class:`multiprocessing.pool.Pool`: its stop under a signal raced with its helper
threads. An interrupt inside ``Pool()`` left a pool nobody owned, whose worker-handler thread
re-forked the workers the exit killed (one was left behind for good); ``terminate()`` takes the
task queue's lock, which an idle worker holds while it waits for a task; and ``map()`` waits on a
lock with no timeout, so a signal the kernel hands to another thread (torch's) is not handled
until the whole map is done (a zoo build test waited 20 s for its experts to finish,
docs/benchmarks.md). Here each job is one forked process with one pipe back: no helper thread,
no shared lock. The parent waits with a timeout, so a pending handler runs within
:data:`POLL_S`, and each process is owned (:func:`evomerge.interrupts.held`) before a signal
that came while it was forked is raised.

Fork only: a job reads what the parent prepared (a module-level dict, say) through the fork.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import traceback
from multiprocessing import connection
from typing import Any, Callable, Sequence

from evomerge.interrupts import held

POLL_S = 0.2  # the parent's wait between looks at its signal handlers


class RemoteTraceback(Exception):
    """The traceback of a job's exception in its process, as text (the ``__cause__`` of the
    exception the parent raises)."""

    def __str__(self) -> str:
        return "\n" + self.args[0]


def run_forked(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int) -> list[Any]:
    """``[fn(job) for job in jobs]``, each call in its own forked process, at most ``workers``
    at once. A job's exception is raised here (its traceback as the ``__cause__``) once the
    other processes are ended; a process that dies without a result raises
    :class:`ChildProcessError` naming its job and exit code. A job leaves interrupts to the
    parent: Ctrl-C (sent to the whole terminal group) is ignored in it, SIGTERM (the parent
    ending it) ends it at once instead of raising the CLI's exception inside the job."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    ctx = mp.get_context("fork")
    results: list[Any] = [None] * len(jobs)
    todo = list(range(len(jobs)))
    running: dict[Any, tuple[int, Any]] = {}  # the pipe's reading end -> (job index, process)
    try:
        while todo or running:
            while todo and len(running) < workers:
                i = todo.pop(0)
                recv, send = ctx.Pipe(duplex=False)
                with held():  # a signal during the fork is raised once the process is ours to end
                    proc = ctx.Process(target=_child, args=(fn, jobs[i], send), daemon=True)
                    try:
                        proc.start()
                    finally:
                        send.close()  # the child holds its own copy: EOF here once it is gone
                    running[recv] = (i, proc)
            for recv in connection.wait(list(running), timeout=POLL_S):
                i, proc = running.pop(recv)
                try:
                    ok, value, text = recv.recv()
                except EOFError:
                    proc.join()
                    raise ChildProcessError(f"job {jobs[i]!r}: its process ended without a result "
                                            f"(exit code {proc.exitcode})") from None
                finally:
                    recv.close()
                proc.join()
                if not ok:
                    raise value from RemoteTraceback(text)
                results[i] = value
    finally:
        _end(running)
    return results


def _end(running: dict[Any, tuple[int, Any]]) -> None:
    """Terminate (SIGTERM, then SIGKILL after 5 s) and reap every process still running."""
    for _, proc in running.values():
        if proc.exitcode is None:
            proc.terminate()
    for recv, (_, proc) in running.items():
        proc.join(5.0)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
        recv.close()
    running.clear()


def _child(fn: Callable[[Any], Any], job: Any, send) -> None:
    # forked inside `held`: its recorders installed, both signals blocked; a SIGTERM that came
    # meanwhile ends the process at the unblocking
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGINT, signal.SIGTERM))
    try:
        reply = (True, fn(job), "")
    except BaseException as err:  # noqa: BLE001 - the parent raises it
        reply = (False, err, traceback.format_exc())
    try:
        send.send(reply)
    except Exception as err:  # a result or exception that cannot be pickled: say so, as text
        send.send((False, RuntimeError(f"job {job!r}: its outcome could not be sent back ({err})"), reply[2]))
    finally:
        send.close()
