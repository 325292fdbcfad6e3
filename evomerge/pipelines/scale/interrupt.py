"""What a scale run does when it is interrupted (Ctrl-C: KeyboardInterrupt; SIGTERM: the CLI's
``Terminated``, a KeyboardInterrupt too) so that it stops within seconds, leaves no process
behind and can be resumed: the searches in flight are cut (their actors killed; a search's
files appear only when it finishes, so a cut one runs again on resume), the side processes are
ended, Ray is stopped. Cells already on disk stay: they are what ``--resume`` skips.
"""

from __future__ import annotations

import threading
from typing import Any

# how long an interrupted run waits for its search thread once the searches' actors are killed
# (it returns within a second or two; the bound only keeps a stuck call from holding the exit)
SEARCH_STOP_WAIT_S = 20.0


def stop_searches(thread: threading.Thread, slots: list[Any]) -> None:
    """Kill the slots' actors until the search ``thread`` ends (a search that was starting its
    actors when the first kill came gets them killed on the next round), at most
    :data:`SEARCH_STOP_WAIT_S`; a thread still running then must not start a Ray of its own
    once the run has stopped this one (Ray's auto-init on its next call)."""
    import time

    deadline = time.monotonic() + SEARCH_STOP_WAIT_S
    while thread.is_alive() and time.monotonic() < deadline:
        kill_slots(slots)
        kill_cell_actors()  # the search phase's scorer (stop target all) and its cell
        thread.join(0.25)
    if thread.is_alive():
        try:
            import ray._private.auto_init_hook as hook

            hook.enable_auto_connect = False
        except (ImportError, AttributeError):
            pass


def kill_cell_actors() -> None:
    """Kill the actors of every open :class:`~evomerge.pipelines.scale.execute.RayCellRunner`
    (a cell cut midway runs again on resume: its file appears only when it is done)."""
    from evomerge.distributed.cluster import kill_actors
    from evomerge.pipelines.scale.execute import LIVE

    for runner in list(LIVE):
        kill_actors(list(runner.actors))


def kill_slots(slots: list[Any]) -> None:
    """Kill the population actors of the search slots (open Runtimes), so the searches in
    flight fail at once instead of running to their end: each slot's actors, those it is still
    starting (``Runtime.starting``: killed without restart, or a restart would wait for ever
    for a removed placement group), and its placement group. The Runtimes' own exit then
    finds them gone."""
    from ray.util.placement_group import remove_placement_group

    from evomerge.distributed.cluster import kill_actors

    for rt in slots:
        pool_actors = getattr(getattr(rt, "pool", None), "actors", None) or []
        kill_actors([*pool_actors, *(getattr(rt, "starting", None) or [])])
        pg = getattr(rt, "pg", None)
        if pg is not None:
            try:
                remove_placement_group(pg)
            except Exception:  # noqa: BLE001 - already removed
                pass


def started_since(before: dict[int, Any]) -> dict[int, Any]:
    """The descendants now that were not among ``before`` (:func:`descendants` taken earlier):
    the processes a run started, not those its caller had."""
    return {pid: p for pid, p in descendants().items() if pid not in before}


def descendants() -> dict[int, Any]:
    """This process's descendants now (pid -> psutil.Process; empty without psutil)."""
    try:
        import psutil
    except ImportError:  # psutil comes with peft / accelerate; without it the sweep is skipped
        return {}
    try:
        return {p.pid: p for p in psutil.Process().children(recursive=True)}
    except psutil.Error:
        return {}


def end_survivors(procs: dict[int, Any], grace: float = 2.0) -> list[int]:
    """SIGTERM, then after ``grace`` seconds SIGKILL, for each of ``procs`` still running (the
    run's children, taken when the interrupt came, that its cleanup did not end: a Ray agent
    whose raylet is gone, say). Returns the pids it had to signal."""
    if not procs:
        return []
    import psutil

    alive = []
    for p in procs.values():
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                p.terminate()
                alive.append(p)
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(alive, timeout=grace)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=grace)
    return [p.pid for p in alive]


# a run interrupted before its plan.json exists records its zoo profile here (the saved config
# does not name it), so `--resume` continues on the same zoo; removed once plan.json is written
ZOO_FILE = "zoo_profile.json"


def record_zoo(run_dir, profile: str | None) -> None:
    from pathlib import Path

    from evomerge.io import write_json_atomic

    if profile is not None and Path(run_dir).is_dir() and not (Path(run_dir) / "plan.json").is_file():
        write_json_atomic(Path(run_dir) / ZOO_FILE, {"zoo_profile": profile})


def recorded_zoo(run_dir) -> str | None:
    """The zoo profile a run directory was started on (plan.json, else :data:`ZOO_FILE`)."""
    import json
    from pathlib import Path

    for name in ("plan.json", ZOO_FILE):
        path = Path(run_dir) / name
        if path.is_file():
            return json.loads(path.read_text()).get("zoo_profile")
    return None
