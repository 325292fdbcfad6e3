"""Time `evomerge scale` (default: no flags) and measure the CPU it used.

    python benchmarks/scale_default.py --out runs/scale [-- extra evomerge scale arguments]

Runs the command as a child process and samples, every ``--interval`` s (default 2), the CPU times of the child and
all its descendants (the Ray head, raylet and workers), keeping each process's last reading;
also samples the machine's load average and whole-machine CPU use (other work on the machine
counts there). Writes ``<out>/benchmark.json`` (with the 2 s CPU timeline) and prints it, with the run's utilisation per
phase (start-up and analysis, searches, cells, report), the phases read off the run's file
times (first / last search result, first / last cell file, report.md), and the tail's steps
(``tail``: when each of the report's files was written, seconds since the last cell file and
since start) and the utilisation of the first ``--head`` seconds in 1 s steps (``head``).

"All cores busy" is read two ways: ``run_utilisation`` (the run's own process tree: CPU
seconds / (wall x cores)) and ``machine_busy`` (the cores not idle, from /proc/stat, whoever
used them: the run, this sampler, whose own CPU is ``harness_cpu_s``, or other work), with
``idle_windows``: every 1 s window with more than 0.2 cores idle. Windows interpolate the
cumulative readings between samples (:func:`at`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _tree_cpu(proc, seen: dict[int, float]) -> None:
    import psutil

    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            t = p.cpu_times()
            seen[p.pid] = t.user + t.system  # (reaped children are not added: they were sampled alive)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def _marks(out: str, t0: float) -> dict[str, float]:
    """Phase boundaries (seconds since start) from the run's files."""
    import glob

    def rel(paths):
        times = [os.path.getmtime(p) - t0 for p in paths if os.path.getmtime(p) >= t0]
        return (min(times), max(times)) if times else (None, None)

    s0, s1 = rel(glob.glob(os.path.join(out, "search", "*", "result.json")))
    c0, c1 = rel(glob.glob(os.path.join(out, "cells", "*.parquet")))
    marks = {"first_search_done": s0, "last_search_done": s1, "first_cell_done": c0, "last_cell_done": c1}
    return {k: round(v, 1) for k, v in marks.items() if v is not None}


TAIL_FILES = ["tables/scores.parquet", "tables/fitness.parquet", "tables/rules.parquet", "tables/scaling_fits.parquet",
              "tables/noise.parquet", "figures/fitness_vs_k.png", "figures/weight_hist_*.png", "report.json", "report.md",
              "timing.json"]
# (a fresh run draws the weight histograms before its last cell: report_side)
HEAD_FILES = ["config.yaml", "expert_gains.json", "plan.json", "analysis/summary.json"]


def file_marks(out: str, t0: float, names: list[str]) -> dict[str, float]:
    """Seconds since start at which each file (glob: the last of them) was last written."""
    import glob

    marks = {}
    for name in names:
        times = [os.path.getmtime(p) - t0 for p in glob.glob(os.path.join(out, name))]
        if times:
            marks[name] = round(max(times), 2)
    return marks


def at(timeline: list[tuple[float, float]], t: float) -> float:
    """A cumulative reading at time ``t``, linear between samples. (Taking the last sample
    before ``t`` instead made short windows alias with the sampling period: samples about
    0.254 s apart put one interval instead of two in a 0.5 s window every ~17 s, a false
    periodic "dip" to 1 core with its surplus in the neighbouring window.)"""
    import bisect

    if not timeline:
        return 0.0
    i = bisect.bisect_right([s for s, _ in timeline], t)
    if i == 0:
        return timeline[0][1] * t / timeline[0][0] if timeline[0][0] > 0 else 0.0
    if i == len(timeline):
        return timeline[-1][1]
    (s0, c0), (s1, c1) = timeline[i - 1], timeline[i]
    return c0 + (c1 - c0) * (t - s0) / (s1 - s0) if s1 > s0 else c1


def window(timeline: list[tuple[float, float]], a: float, b: float, cores: int, step: float = 1.0) -> list[list[float]]:
    """Utilisation of the cores in [a, b) in ``step`` s windows: ``[start, cores busy]`` rows."""
    rows, t = [], a
    while t + step <= b + 1e-9:
        rows.append([round(t, 2), round((at(timeline, t + step) - at(timeline, t)) / step, 2)])
        t += step
    return rows


def phases(out: str, t0: float, wall: float, timeline: list[tuple[float, float]], cores: int,
           idle: list[tuple[float, float]] | None = None) -> list[dict]:
    """Utilisation of the run's process tree between consecutive phase marks, and (``idle``:
    the machine's idle CPU seconds so far, from /proc/stat) how busy the machine's cores were."""
    marks = _marks(out, t0)
    edges = [("start", 0.0)] + sorted(marks.items(), key=lambda kv: kv[1]) + [("end", wall)]
    rows = []
    for (a, ta), (b, tb) in zip(edges, edges[1:]):
        if tb - ta < 1:
            continue
        cpu = at(timeline, tb) - at(timeline, ta)
        row = {"from": a, "to": b, "seconds": round(tb - ta, 1), "cpu_s": round(cpu, 1),
               "utilisation": round(cpu / ((tb - ta) * cores), 3)}
        if idle:
            row["machine_busy"] = round(1 - (at(idle, tb) - at(idle, ta)) / ((tb - ta) * cores), 3)
        rows.append(row)
    return rows


def machine_idle_s() -> float | None:
    """Idle CPU seconds of the machine since boot, all cores (idle + iowait in /proc/stat;
    None where there is no /proc/stat)."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    import psutil

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--interval", type=float, default=2.0, help="CPU sampling period, seconds")
    ap.add_argument("--head", type=float, default=12.0, help="seconds of the start shown in 1 s steps")
    ap.add_argument("--stop-after", type=float, default=None,
                    help="interrupt the run (SIGINT) after this many seconds: measure its start only")
    ap.add_argument("rest", nargs="*")
    args = ap.parse_args()
    cmd = [sys.executable, "-m", "evomerge", "scale", "--out", args.out, "--no-progress", *args.rest]
    cores = os.cpu_count() or 1
    seen: dict[int, float] = {}
    loads, machine = [], []
    psutil.cpu_percent(None)
    t0 = time.time()
    child = subprocess.Popen(cmd)
    proc = psutil.Process(child.pid)
    timeline: list[tuple[float, float]] = []  # (seconds since start, CPU seconds of the tree so far)
    idle0 = machine_idle_s()
    idle: list[tuple[float, float]] = []  # (seconds since start, machine idle CPU seconds since start)
    interrupted = False
    while child.poll() is None:
        if args.stop_after is not None and not interrupted and time.time() - t0 >= args.stop_after:
            import signal

            child.send_signal(signal.SIGINT)
            interrupted = True
        elif interrupted and time.time() - t0 >= args.stop_after + 5:  # Ray's wait may swallow SIGINT
            import signal

            child.send_signal(signal.SIGTERM)
        _tree_cpu(proc, seen)
        timeline.append((time.time() - t0, sum(seen.values())))
        if idle0 is not None:
            idle.append((timeline[-1][0], machine_idle_s() - idle0))
        loads.append(os.getloadavg()[0])
        machine.append(psutil.cpu_percent(None))
        time.sleep(args.interval)
    wall = time.time() - t0 if not interrupted else args.stop_after
    if not interrupted:  # (the child is reaped: its last reading stands)
        timeline.append((wall, sum(seen.values())))
    cpu = sum(seen.values()) if not interrupted else timeline[-1][1] if timeline else 0.0
    result = {
        "command": " ".join(cmd[2:]), "returncode": child.returncode, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
        "cores": cores, "run_utilisation": round(cpu / (wall * cores), 3),
        "machine_cpu_percent_mean": round(sum(machine) / max(1, len(machine)), 1),
        "loadavg_1min_mean": round(sum(loads) / max(1, len(loads)), 2), "loadavg_1min_max": round(max(loads, default=0), 2),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "interval_s": args.interval,
        # the machine's cores: busy = not idle, whoever used them (the run, this harness, others)
        "machine_busy": round(1 - at(idle, wall) / (wall * cores), 4) if idle else None,
        "harness_cpu_s": round(time.process_time(), 1),  # this sampler's own CPU (not the run's)
        "phases": phases(args.out, t0, wall, timeline, cores, idle),
        "head": window(timeline, 0.0, args.head, cores),
        "head_files": file_marks(args.out, t0, HEAD_FILES),
        "tail_files": file_marks(args.out, t0, TAIL_FILES),
        "tail": window(timeline, _marks(args.out, t0).get("last_cell_done", wall), wall, cores, step=0.5),
        "idle_windows": [r for r in window(idle, 0.0, wall, cores) if r[1] > 0.2],  # 1 s with > 0.2 cores idle
        "timeline": [[round(t, 1), round(c, 1)] for t, c in timeline],  # (s since start, tree CPU s so far)
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "benchmark.json"), "w") as fh:
        json.dump(result, fh, indent=2)
    print(json.dumps(result, indent=2))
    return child.returncode


if __name__ == "__main__":
    raise SystemExit(main())
