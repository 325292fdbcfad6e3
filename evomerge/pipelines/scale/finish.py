"""Work beside the scale driver's main thread: at the end, Ray stops in a thread beside the
report, which needs no Ray (its shutdown mostly waits for Ray's processes to exit); at the
start, the plan (each expert scored alone) is built in a thread while the main thread waits
for Ray's start (``ray.init`` stays in the main thread: it sets Ray's SIGTERM handler there)."""

from __future__ import annotations

import threading
from typing import Any, Callable


class _Beside:
    """``fn(*args)`` in a thread; :meth:`join` waits and raises its error."""

    def __init__(self, fn: Callable, *args: Any, name: str = "ray-shutdown"):
        self.error: BaseException | None = None
        self.value: Any = None
        self.thread = threading.Thread(target=self._run, args=(fn, args), name=name)
        self.thread.start()

    def _run(self, fn, args) -> None:
        try:
            self.value = fn(*args)
        except BaseException as e:  # noqa: BLE001 - raised again in join
            self.error = e

    def join(self) -> Any:
        """Wait; ``fn``'s value, or its error raised here."""
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.value


def disconnect_beside(started_ray: bool) -> _Beside | None:
    """``disconnect`` in a thread (Ray's shutdown mostly waits for its processes to exit)."""
    if not started_ray:
        return None
    from evomerge.distributed.cluster import disconnect

    return _Beside(disconnect, True)


def beside(stack, fn: Callable, *args: Any, name: str) -> _Beside:
    """``fn(*args)`` in a thread now; ``.join()`` gives its value. ``stack`` (an ``ExitStack``)
    waits for the thread on exit, so an error elsewhere does not leave it running unseen."""
    job = _Beside(fn, *args, name=name)
    stack.callback(job.thread.join)
    return job
