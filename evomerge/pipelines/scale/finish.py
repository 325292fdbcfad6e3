"""The end of a scale run: Ray stops in a thread beside the report, which needs no Ray (its
shutdown mostly waits for Ray's processes to exit). :class:`Beside` also runs the search phase
in a thread of its own, so the main thread, where Ctrl-C lands, can stop it."""

from __future__ import annotations

import threading
from typing import Any, Callable


class Beside:
    """``fn(*args)`` in a thread; :meth:`join` waits, raises its error and returns its value.
    ``daemon``: a thread that an interrupted run may leave behind (it must not hold up the exit)."""

    def __init__(self, fn: Callable, *args: Any, name: str = "ray-shutdown", daemon: bool = False):
        self.error: BaseException | None = None
        self.value: Any = None
        self.thread = threading.Thread(target=self._run, args=(fn, args), name=name, daemon=daemon)
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


def disconnect_beside(started_ray: bool) -> Beside | None:
    """``disconnect`` in a thread (Ray's shutdown mostly waits for its processes to exit)."""
    if not started_ray:
        return None
    from evomerge.distributed.cluster import disconnect

    return Beside(disconnect, True)
