"""The one table of ``benchmarks/gpu_check.sh``: issue 18's GPU targets against what its parts wrote.

    python benchmarks/model_scale_gpu_table.py OUT_DIR

Reads ``merge.txt`` (``merge_throughput.py --json``: its last line), ``model_scale_1b_naive.json``
(the stacked evaluator), ``model_scale_1b.json`` (the actors; written after each phase, so a
part stopped by its time limit still shows the phases it finished), ``tests.txt``,
``tests_ray.txt``, ``status.txt`` and ``gpu.txt`` from ``OUT_DIR``; a part that did not run or
failed is a row saying so, never a missing row.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

MiB = 1 << 20


def _status(out: Path) -> dict[str, str]:
    p = out / "status.txt"
    if not p.is_file():
        return {}
    rows = (line.split(" ", 1) for line in p.read_text().splitlines() if line.strip())
    return {k: v for k, v in rows}


def _ran(status: dict[str, str], part: str) -> str:
    code = status.get(part)
    if code is None:
        return "did not run"
    return "" if code == "0" else ("timed out" if code in ("124", "137") else f"exit {code}")


def merge_rows(out: Path, status: dict[str, str]) -> list[tuple[str, str, str, str]]:
    try:
        last = json.loads((out / "merge.txt").read_text().strip().splitlines()[-1])
        t = last["timings"]
    except (OSError, IndexError, ValueError, KeyError):
        return [("TIES / DARE-TIES vs copy, 10 x 4096x4096", "-", "<= 4x", _ran(status, "merge") or "no result")]
    copy = t["memcopy"]["seconds"]
    shape = f"{last.get('experts', 10)} x {last.get('size', 4096)}x{last.get('size', 4096)}"
    rows = []
    for op, name in (("evomerge_ties", "TIES (fused kernel)"), ("evomerge_dare_ties", "DARE-TIES (fused, rng fast)")):
        x = t[op]["seconds"] / copy
        peft = t.get("peft_" + op.split("_", 1)[1], {}).get("seconds")
        note = f"{t[op]['seconds'] * 1e3:.1f} ms, copy {copy * 1e3:.2f} ms" + (
            f", peft {peft / t[op]['seconds']:.1f}x slower" if peft else "")
        rows.append((f"{name} / copy, {shape} fp32", f"{x:.1f}x", "<= 4x", ("met; " if x <= 4 else "MISSED; ") + note))
    return rows


def model_rows(out: Path, status: dict[str, str]) -> list[tuple[str, str, str, str]]:
    res: dict = {"phases": [], "naive": None}
    for name, part in (("model_scale_1b_naive.json", "model_naive"), ("model_scale_1b.json", "model")):
        try:
            r = json.loads((out / name).read_text())
        except (OSError, ValueError):
            if part in status:
                res["phases"].append({"phase": "failed", "part": part, "why": _ran(status, part) or "no result"})
            continue
        res["phases"] += r["phases"]
        res["naive"] = res["naive"] or r.get("naive")
        why = _ran(status, part)
        if why and part in status:
            done = ", ".join(p["phase"] for p in r["phases"]) or "none"
            res["phases"].append({"phase": "failed", "part": part, "why": f"{why} (phases finished: {done})"})
    if not res["phases"] and not res["naive"]:
        return [("model_scale 1b (actors on the GPU, stacked evaluator)", "-", "", "did not run")]
    rows = []
    for p in res["phases"]:
        if p["phase"] == "failed":
            rows.append((f"model_scale 1b ({p['part']})", "-", "", p["why"]))
        if p["phase"] in ("genome", "swarm", "cell"):
            share = p["outside_eval"]
            rows.append((f"{p['phase']}: outside-evaluation share", f"{100 * share:.1f}%", "< 10%",
                         f"{'met' if share < 0.1 else 'MISSED'}; {p['evaluations']} evals in {p['wall_s']:.1f} s, "
                         f"device peak {p['device_peak'] / MiB:.0f} MiB, host own {p.get('own_peak_extra', 0) / MiB:.0f}"
                         f" MiB ({p.get('own_peak_extra', 0) / p['bound']:.2f}x bound)"))
        elif p["phase"] == "merge":
            m = p["detail"]
            rows.append(("registry merge on the GPU actor (merged() s: TA / TIES / DARE-TIES)",
                         " / ".join(f"{m[f'merged_{k}_s']:.2f}" for k in ("task_arithmetic", "ties", "dare_ties")), "",
                         f"copy of the stacked deltas {m['copy_s']:.3f} s"))
    if "model_actors" in status:
        rows.append(("GENOME / Model Swarms / scale cell on GPU actors", "-", "", status["model_actors"]))
    nv = res.get("naive")
    if nv:
        loops = nv.get("loops", ["copy"])
        others = "".join(f"; naive ({x}) {nv[f'naive_{x}_per_s']:.2f} cand/s, {nv[f'speedup_{x}']:.1f}x"
                         for x in loops[1:])
        rows.append((f"stacked evaluator vs naive loop ({loops[0]}, {nv['candidates']} candidates)",
                     f"{nv['speedup']:.1f}x", ">= 20x",
                     f"{'met' if nv['speedup'] >= 20 else 'MISSED'}; {nv['in_memory_per_s']:.2f} vs "
                     f"{nv['naive_per_s']:.2f} cand/s{others}, max |score diff| {nv['max_score_diff']:.1e}"))
    return rows


def test_rows(out: Path, status: dict[str, str]) -> list[tuple[str, str, str, str]]:
    rows = []
    for part, name in (("tests", "GPU tests without Ray"), ("tests_ray", "GPU tests with Ray (test_evolve_gpu)")):
        try:
            text = (out / f"{part}.txt").read_text()
        except OSError:
            rows.append((name, "-", "all pass", _ran(status, part) if part in status and status[part].isdigit()
                         else status.get(part, "did not run")))
            continue
        summary = [line for line in text.splitlines() if re.search(r"\b(passed|failed|error|skipped)", line)]
        rows.append((name, summary[-1].strip("= ") if summary else "?", "all pass", _ran(status, part) or "ok"))
    return rows


def main(argv: list[str] | None = None) -> int:
    out = Path((argv or sys.argv[1:])[0])
    status = _status(out)
    gpu = (out / "gpu.txt").read_text().strip() if (out / "gpu.txt").is_file() else "?"
    rows = merge_rows(out, status) + model_rows(out, status) + test_rows(out, status)
    print(f"issue 18 GPU check on {gpu}")
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
