"""The end of a scale run: Ray stops in a thread beside the report, which needs no Ray (its
shutdown mostly waits for Ray's processes to exit)."""

from __future__ import annotations

import threading
from typing import Any, Callable


class _Beside:
    """``fn(*args)`` in a thread; :meth:`join` waits and raises its error."""

    def __init__(self, fn: Callable, *args: Any):
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn, args), name="ray-shutdown")
        self.thread.start()

    def _run(self, fn, args) -> None:
        try:
            fn(*args)
        except BaseException as e:  # noqa: BLE001 - raised again in join
            self.error = e

    def join(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error


def disconnect_beside(started_ray: bool) -> _Beside | None:
    """``disconnect`` in a thread (Ray's shutdown mostly waits for its processes to exit)."""
    if not started_ray:
        return None
    from evomerge.distributed.cluster import disconnect

    return _Beside(disconnect, True)
