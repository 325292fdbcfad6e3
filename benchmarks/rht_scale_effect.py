"""RHT's effect on the LoRA track, read from a finished ``evomerge scale`` run: per method and k,
RHT - plain on validation and test (mean and sd over the run's seeds) and the worst validation
difference. Reads the run directory only (its cells); writes nothing there.

    python benchmarks/rht_scale_effect.py RUN_DIR [--target all|union] [--json out.json]

Seed s of a ``+rht`` cell is paired with seed s of the same (method, k) plain cell; a deterministic
plain merge has only seed 0, which then pairs with every RHT seed (its value does not depend on
the seed). Printed: a markdown table and, per method, the mean over k and the worst cell.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def effects(fitness, target: str):
    """Rows ``{method, k, split, n, mean, sd, worst}`` of RHT - plain over paired seeds."""
    f = fitness[(fitness["target"] == target) & (fitness["kind"] == "merge")]
    rows = []
    for (method, k, split), g in f.groupby(["method", "k", "split"]):
        plain = {int(s): v for s, v in zip(g[~g["rht"]]["seed"], g[~g["rht"]]["fitness"])}
        rht = {int(s): v for s, v in zip(g[g["rht"]]["seed"], g[g["rht"]]["fitness"])}
        if not plain or not rht:
            continue
        d = [v - plain.get(s, plain.get(0)) for s, v in sorted(rht.items()) if s in plain or 0 in plain]
        if not d:
            continue
        rows.append({"method": method, "k": int(k), "split": split, "n": len(d), "mean": statistics.mean(d),
                     "sd": statistics.stdev(d) if len(d) > 1 else 0.0, "worst": min(d),
                     "plain": statistics.mean(plain.values()), "rht": statistics.mean(rht.values())})
    return rows


def table(rows) -> str:
    by = {(r["method"], r["k"], r["split"]): r for r in rows}
    keys = sorted({(m, k) for m, k, _ in by})
    lines = ["| method | k | seeds | validation plain | validation RHT - plain (sd) | worst validation | test RHT - plain (sd) |",
             "|---|---|---|---|---|---|---|"]
    for m, k in keys:
        v, t = by.get((m, k, "validation")), by.get((m, k, "test"))
        if v is None or t is None:
            continue
        lines.append(f"| {m} | {k} | {v['n']} | {v['plain']:.4f} | {v['mean']:+.4f} ({v['sd']:.4f}) | {v['worst']:+.4f} | "
                     f"{t['mean']:+.4f} ({t['sd']:.4f}) |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--target", choices=("all", "union"), default="all")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from evomerge.pipelines.scale.report import load_run
    from evomerge.pipelines.scale.tables import fitness_table

    _, scores, _ = load_run(args.run_dir)
    rows = effects(fitness_table(scores), args.target)
    if not rows:
        raise SystemExit(f"{args.run_dir}: no merge cells with both a plain and an RHT version")
    print(f"target: {args.target}")
    print(table(rows))
    print()
    for m in sorted({r["method"] for r in rows}):
        for split in ("validation", "test"):
            rs = [r for r in rows if r["method"] == m and r["split"] == split]
            w = min(rs, key=lambda r: r["worst"])
            print(f"{m:16s} {split:10s} mean over k {statistics.mean(r['mean'] for r in rs):+.4f}, "
                  f"range {min(r['mean'] for r in rs):+.4f}..{max(r['mean'] for r in rs):+.4f}, "
                  f"worst seed {w['worst']:+.4f} (k={w['k']})")
    if args.json:
        args.json.write_text(json.dumps({"run_dir": str(args.run_dir), "target": args.target, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
