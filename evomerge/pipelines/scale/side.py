"""Run a function of an importable module in a child Python process, beside the caller.

The child is a fresh ``python -c`` interpreter: unlike multiprocessing's spawn it does not run
the caller's main script again, so a plain script that calls ``run_scale`` needs no
``if __name__ == "__main__"`` guard. It gets the caller's ``sys.path``; what the function
prints goes to stderr; its return value (picklable) comes back through a pipe.

:meth:`SideJob.warm` starts the child early: it imports the function's module (the imports are
most of a small job's cost) and then waits for the arguments (:meth:`SideJob.send`), so the job
itself starts at once when they come.

SIGINT (:meth:`SideJob.stop`, or a Ctrl-C that reaches the whole process group) and SIGTERM
raise in the child as in the command line's process (:func:`evomerge.interrupts.stop_on_signals`):
once, so a second signal does not cut its cleanup short, and again if the first landed in a
finalizer, where Python would print it and go on.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from typing import Any, Callable

from evomerge.errors import EvomergeError

_CHILD = """
import os, pickle, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # until stop_on_signals: its caller is still writing
sys.path[:] = pickle.load(sys.stdin.buffer)
out = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)
module, name = pickle.load(sys.stdin.buffer)
from evomerge.interrupts import stop_on_signals
with stop_on_signals():  # one exception per stop, even inside a garbage collection's callback
    try:
        import importlib
        fn = getattr(importlib.import_module(module), name)
        try:
            args = pickle.load(sys.stdin.buffer)  # a warm child waits here
        except EOFError:  # cancelled before its arguments came
            args = None
        result = ("cancelled", None) if args is None else ("ok", fn(*args))
    except BaseException:
        import traceback
        result = ("error", traceback.format_exc())
    pickle.dump(result, out)
    out.close()  # the caller has the answer now
    sys.stdout.flush()
    sys.stderr.flush()
os._exit(0)  # the work is done and on disk: skip the interpreter's teardown (about 1 s with torch)
"""


class Inbox:
    """In a side job's child (a job sent with ``keep_open``): the caller's messages
    (:meth:`SideJob.tell`, :meth:`take`) and ``closed``, set once the caller has closed the
    input (:meth:`SideJob.close_input`, or the caller's exit), after every message came."""

    def __init__(self):
        import threading

        self.closed = threading.Event()
        self._messages: list = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, name="side-input", daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                message = pickle.load(sys.stdin.buffer)
                with self._lock:
                    self._messages.append(message)
        except BaseException:  # noqa: BLE001 - end of file (or a broken pipe): the caller is done
            pass
        finally:
            self.closed.set()

    def take(self) -> list:
        """The messages that came since the last call, in order."""
        with self._lock:
            out, self._messages = self._messages, []
        return out


class SideJob:
    """One child process running ``fn(*args)``; :meth:`result` waits for it."""

    def __init__(self, fn: Callable | str, *args: Any, _send: bool = True):
        module, name = fn.split(":") if isinstance(fn, str) else (fn.__module__, fn.__qualname__)
        self.what = f"{module}.{name}"
        self.proc = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            pickle.dump(list(sys.path), self.proc.stdin)
            pickle.dump((module, name), self.proc.stdin)
            self.proc.stdin.flush()
            if _send:
                self.send(*args)
        except BaseException:
            self.proc.kill()
            raise
        self._result: tuple[str, Any] | None = None

    @classmethod
    def warm(cls, fn: Callable | str) -> "SideJob":
        """A child that imports ``fn``'s module now and runs ``fn`` once :meth:`send` gives
        the arguments (:meth:`cancel`: it exits without running it). ``fn`` may be named as
        ``"module:function"``, so the caller need not import a module that only the child needs."""
        return cls(fn, _send=False)

    def send(self, *args: Any, keep_open: bool = False) -> None:
        """The arguments of a :meth:`warm` job: the child runs the function now. ``keep_open``:
        the pipe stays open until :meth:`close_input`, which a function that waits for
        :class:`Inbox` (messages, then "go on") sees."""
        pickle.dump(args, self.proc.stdin)
        if keep_open:
            self.proc.stdin.flush()
        else:
            self.proc.stdin.close()

    def tell(self, message: Any) -> None:
        """A message to a job sent with ``keep_open`` (its :class:`Inbox`)."""
        try:
            pickle.dump(message, self.proc.stdin)
            self.proc.stdin.flush()
        except OSError:  # the child is gone: its error comes with result()
            pass

    def close_input(self) -> None:
        """Tell a job sent with ``keep_open`` that it may go on (its :class:`Inbox` is closed)."""
        if not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:  # the child is gone: its error comes with result()
                pass

    def cancel(self) -> None:
        """A warm job that was not sent its arguments exits without running; waits for it."""
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        self.wait()

    def stop(self, grace: float = 3.0) -> None:
        """End the child now (an interrupted run): SIGINT, so its atomic writers remove their
        temporary files as on Ctrl-C; after ``grace`` seconds, SIGKILL. It has written no
        partial file either way (every output is renamed into place when complete)."""
        import signal

        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGINT)
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            except ProcessLookupError:
                pass
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None and not f.closed:
                try:
                    f.close()
                except OSError:  # a broken pipe to a child that is gone
                    pass
        if self._result is None:
            self._result = ("cancelled", None)

    def result(self) -> Any:
        if self._result is None:
            out = self.proc.stdout.read()  # until the child closes its end: its answer is complete
            self.proc.stdout.close()
            try:
                self._result = pickle.loads(out)
            except Exception:  # noqa: BLE001 - the child died before answering
                self.proc.wait()
                self._result = ("error", f"the child process exited with status {self.proc.returncode}")
        kind, value = self._result
        if kind == "cancelled":
            raise EvomergeError(f"{self.what} (in a child process) was cancelled before it ran")
        if kind != "ok":
            raise EvomergeError(f"{self.what} (in a child process) failed:\n{value}")
        return value

    def wait(self) -> None:
        """Wait for the child without raising its error (cleanup paths)."""
        if not self.proc.stdin.closed:  # a warm job never sent: it would wait for ever
            self.proc.stdin.close()
        if self._result is None:
            try:
                self.result()
            except EvomergeError:
                pass
        self.proc.wait()  # its exit (a value comes back before the child's teardown)
