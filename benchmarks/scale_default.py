"""Time `evomerge scale` (default: no flags) and measure the CPU it used.

    python benchmarks/scale_default.py --out runs/scale [-- extra evomerge scale arguments]

Runs the command as a child process and samples, every 2 s, the CPU times of the child and
all its descendants (the Ray head, raylet and workers), keeping each process's last reading;
also samples the machine's load average and whole-machine CPU use (other work on the machine
counts there). Writes ``<out>/benchmark.json`` and prints it.
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


def main() -> int:
    import psutil

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
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
    while child.poll() is None:
        _tree_cpu(proc, seen)
        loads.append(os.getloadavg()[0])
        machine.append(psutil.cpu_percent(None))
        time.sleep(2.0)
    wall = time.time() - t0
    cpu = sum(seen.values())
    result = {
        "command": " ".join(cmd[2:]), "returncode": child.returncode, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
        "cores": cores, "run_utilisation": round(cpu / (wall * cores), 3),
        "machine_cpu_percent_mean": round(sum(machine) / max(1, len(machine)), 1),
        "loadavg_1min_mean": round(sum(loads) / max(1, len(loads)), 2), "loadavg_1min_max": round(max(loads, default=0), 2),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "benchmark.json"), "w") as fh:
        json.dump(result, fh, indent=2)
    print(json.dumps(result, indent=2))
    return child.returncode


if __name__ == "__main__":
    raise SystemExit(main())
