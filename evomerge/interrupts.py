"""SIGINT / SIGTERM as exceptions in the main thread, so that every ``finally`` and context
manager of a run (its Ray session, its children, its atomic writers) cleans up, in the command
line's process and in the child processes it starts (:mod:`evomerge.pipelines.scale.side`).

Standard library only: a child imports this before the heavy modules it is about to import.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM (a cluster cancelling the job), raised where Ctrl-C raises KeyboardInterrupt so the
    same cleanup runs."""


# the signal list of the outermost open `stop_on_signals` (None when none is open): nested ones share it
_FIRED: list[int] | None = None
# called once, on the first signal, before its exception is raised (`when_interrupted`)
_ON_FIRST: list[Callable[[], None]] = []


@contextlib.contextmanager
def when_interrupted(callback: Callable[[], None]) -> Iterator[None]:
    """Call ``callback`` on the first SIGINT / SIGTERM that an open :func:`stop_on_signals`
    turns into an exception, before it is raised: for what must change before the unwinding
    starts (a library that would log the cut it causes, say). The callback runs inside the
    signal handler: keep it short, and let it not raise."""
    _ON_FIRST.append(callback)
    try:
        yield
    finally:
        _ON_FIRST.remove(callback)


STOPS = ("SIGINT", "SIGTERM")


@contextlib.contextmanager
def held() -> Iterator[None]:
    """SIGINT / SIGTERM that come inside the block reach their handlers at its end, whatever
    handlers are installed (this module's, Python's default, a caller's): for a block that
    creates something the caller must own before an exception may be raised (a process pool
    half built is left running by nobody; a trial a storage call creates, which cut inside the
    call would exist without the caller knowing its id). Keep the block short: the interrupt
    waits for it. Processes forked inside the block start with both
    signals blocked: each unblocks them (``signal.pthread_sigmask(SIG_UNBLOCK, ...)``) once its
    own handlers are set. Main thread only (the only one where Python raises them); elsewhere
    nothing changes.

    Blocking the signals in the main thread is not enough on its own: the kernel hands a signal
    to any thread that does not block it (torch's, a progress bar's) and Python then runs the
    handler in the main thread anyway. The handlers are swapped for recorders too."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stops = [getattr(signal, name) for name in STOPS]
    came: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: came.append(signum)) for s in stops}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # one that was pending is recorded here
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in came:
            signal.raise_signal(s)


def interrupt_behind(err: BaseException) -> KeyboardInterrupt | None:
    """The interrupt ``err`` is, or the one it was raised while handling (its ``__context__``
    chain): an interrupt inside Optuna's write of a trial's end surfaces as an UnboundLocalError
    from its ``finally`` (Optuna 5.0)."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, KeyboardInterrupt):
            return err
        err, seen = err.__context__, seen + 1
    return None


def caused_by_stop(err: BaseException) -> bool:
    """Whether ``err`` is what a SIGINT / SIGTERM made of the code it cut: an interrupt (or an
    exception raised while one was handled, :func:`interrupt_behind`) or, once a signal has come
    under an open :func:`stop_on_signals`, any exception. A library that calls Python from C or
    Rust may report the KeyboardInterrupt raised in its call as an error of its own, with no
    chain back to it: pydantic-core, interrupted while it builds a model's schema, raises a
    ``SchemaError`` whose message only names it."""
    return interrupt_behind(err) is not None or bool(_FIRED)


def as_interrupt(err: BaseException) -> KeyboardInterrupt:
    """The interrupt behind ``err`` (:func:`caused_by_stop` is true of it), or a new one for
    the signal that came when a library hid it."""
    cut = interrupt_behind(err)
    if cut is not None:
        return cut
    import signal

    return Terminated() if _FIRED and _FIRED[0] == signal.SIGTERM else KeyboardInterrupt()


def _raise(signum: int) -> None:
    import signal

    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[list[int]]:
    """SIGINT raises KeyboardInterrupt and SIGTERM :class:`Terminated` in the main thread, once:
    a second signal while the first one's cleanup runs is ignored (the cleanup is bounded), so a
    repeated Ctrl-C does not cut it short and leave children behind. Yields the list of the
    signal that came (empty until then): Ray's blocking calls raise a KeyboardInterrupt of their
    own when a handler raises inside them, so the exception's class does not tell SIGTERM
    apart. The previous handlers come back on exit. Outside the main thread (a library caller's
    worker thread) nothing changes. Nested calls (``main`` holds one around every command, a
    command may open its own) share the outermost one's handlers and list.

    The exception raised inside a finalizer or a weakref callback (a garbage collection's) is
    printed and dropped by Python ("Exception ignored in ..."): it is then delivered once more,
    from a thread, so the run still stops and nothing is printed."""
    import signal
    import threading

    global _FIRED
    fired: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield fired
        return
    if _FIRED is not None:
        yield _FIRED
        return

    import os
    import sys

    again: list[int] = []  # a signal to deliver once more: its exception was swallowed
    in_hook: list[int] = []

    def deliver_later(signum):  # from a thread, once the main thread has left the hook below
        timer = threading.Timer(0.05, os.kill, (os.getpid(), signum))
        timer.daemon = True
        timer.start()

    def handler(signum, frame):
        if fired and not again:
            return
        if again:
            if in_hook:
                deliver_later(again[0])
                return
            signum = again.pop()
        else:
            fired.append(signum)
            for callback in list(_ON_FIRST):
                callback()
        _raise(signum)

    hook = sys.unraisablehook

    def unraisable(info):
        if fired and isinstance(info.exc_value, KeyboardInterrupt) and not again:
            in_hook.append(1)
            try:
                again.append(fired[0])
                deliver_later(fired[0])
            finally:
                in_hook.clear()
            return
        hook(info)

    before = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    sys.unraisablehook = unraisable
    _FIRED = fired
    try:
        yield fired
    finally:
        _FIRED = None
        sys.unraisablehook = hook
        for s, h in before.items():
            signal.signal(s, h)


def exit_code(err: BaseException, fired: list[int]) -> int:
    """143 for SIGTERM (the exception, or the signal list when Ray re-raised it as a plain
    KeyboardInterrupt), else 130."""
    import signal

    return 143 if isinstance(err, Terminated) or signal.SIGTERM in fired else 130
