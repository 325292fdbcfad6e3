"""Interrupt ``evomerge scale`` at chosen moments and record how it stops (issue 13).

Each trial starts ``evomerge scale --small --out DIR`` as a subprocess in a session of its own
(a process group, as a terminal's foreground job), waits for a moment (seconds after the
start, or a phase read from the run directory), sends SIGINT or SIGTERM to the driver alone or
to its whole group, and records: seconds to exit, exit code, the last stderr line, whether a
traceback was printed, which of the run's descendant processes (every one seen before the
signal) are still alive 3 s after the exit, and the atomic writers' temporary files left in
the run directory. Then ``--resume`` runs in the same directory; its scores table (every
column but ``seconds``) is compared with an uninterrupted run's (``--reference DIR``).

    python benchmarks/scale_interrupt.py --reference /tmp/ref --work /tmp/x \
        --trial 2:int:driver --trial cells:term:group ...

A trial is ``WHEN:SIGNAL:TARGET``: WHEN a number of seconds, or ``cells`` (the first cell
file exists), ``search`` (a search folder exists), ``report`` (``timing.json`` exists: the
cells are done and the report is being written); SIGNAL ``int`` | ``term``; TARGET ``driver`` |
``group``; a fourth field ``r`` resumes the run afterwards. Prints one row per trial.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

SIGNALS = {"int": signal.SIGINT, "term": signal.SIGTERM}


def _phase_reached(run: Path, when: str) -> bool:
    if when == "cells":
        return any((run / "cells").glob("*.parquet"))
    if when == "search":
        return (run / "search").is_dir() and any((run / "search").iterdir())
    if when == "report":
        return (run / "timing.json").is_file()
    raise ValueError(when)


def _alive(procs: dict[int, psutil.Process]) -> list[str]:
    out = []
    for p in procs.values():
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid}:{p.name()}")
        except psutil.NoSuchProcess:
            pass
    return out


def scores(run: Path):
    from evomerge.pipelines.scale.store import CellStore

    t = CellStore(run).scores().to_pandas().drop(columns=["seconds"])
    return t.sort_values(list(t.columns), ignore_index=True)


def trial(spec: str, work: Path, ref, extra: list[str], timeout: float = 120.0) -> dict:
    when, sig_name, target, *flags = spec.split(":")
    run = work / spec.replace(":", "_").replace(".", "p")
    shutil.rmtree(run, ignore_errors=True)
    cmd = ["evomerge", "scale", "--small", "--out", str(run), "--no-progress", *extra]
    err_path = work / f"{run.name}.err"
    with open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=err, stderr=err, start_new_session=True)
        me = psutil.Process(proc.pid)
        seen: dict[int, psutil.Process] = {}
        fired = None
        while proc.poll() is None:
            try:
                for c in me.children(recursive=True):
                    seen.setdefault(c.pid, c)
            except psutil.NoSuchProcess:
                break
            now = time.perf_counter() - t0
            due = now >= float(when) if when[0].isdigit() else _phase_reached(run, when)
            if due:
                fired = now
                (os.kill if target == "driver" else os.killpg)(proc.pid, SIGNALS[sig_name])
                break
            time.sleep(0.05)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = "hung"
        exit_s = time.perf_counter() - t0 - (fired or 0.0)
    time.sleep(3.0)
    left = _alive(seen)
    for p in seen.values():  # leave the machine clean for the next trial
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    if rc == "hung":
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    text = err_path.read_text(errors="replace").strip().splitlines()
    tmp = [str(p.relative_to(run)) for p in run.rglob("*.tmp-*")] if run.exists() else []
    row = {
        "trial": spec, "fired_s": None if fired is None else round(fired, 1), "exit_s": round(exit_s, 2), "rc": rc,
        "last": text[-1][:90] if text else "", "traceback": any("Traceback" in t for t in text),
        "children_seen": len(seen), "left": left, "tmp": tmp,
    }
    if "r" in flags and fired is not None and rc != 0 and (run / "config.yaml").is_file():
        t1 = time.perf_counter()
        res = subprocess.run(["evomerge", "scale", "--out", str(run), "--resume", "--no-progress"],
                             capture_output=True, text=True)
        row["resume_rc"] = res.returncode
        row["resume_s"] = round(time.perf_counter() - t1, 1)
        if res.returncode == 0 and ref is not None:
            row["resume_equal"] = bool(scores(run).equals(ref))
        elif res.returncode != 0:
            row["resume_err"] = res.stderr.strip().splitlines()[-1:]
    shutil.rmtree(run, ignore_errors=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, help="an uninterrupted run of the same command (for the equality)")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--trial", action="append", required=True)
    ap.add_argument("--set", action="append", default=[], help="passed to evomerge scale")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    ref = scores(args.reference) if args.reference else None
    extra = [a for s in args.set for a in ("--set", s)]
    print(f"load {open('/proc/loadavg').read().split()[:3]}", flush=True)
    for spec in args.trial:
        row = trial(spec, args.work, ref, extra)
        print(row, flush=True)


if __name__ == "__main__":
    sys.exit(main())
