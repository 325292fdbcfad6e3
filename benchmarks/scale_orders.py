"""Which expert order gives the best curve? `evomerge scale` once per order, registry merges only.

    python benchmarks/scale_orders.py --out runs/orders [--zoo default] [--methods task_arithmetic,ties]

Each order (given, random, low_correlation, gain) runs the registry merges to the whole pool
(no searches, no RHT, no pairs; 3 seeds, which only matter for `random`). Per order and method:
the peak validation fitness on all tasks (seed mean) and the mean over k of the curve; the
order with the best mean peak over methods is printed first. Writes ``<out>/orders.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ORDERS = ("given", "random", "low_correlation", "gain")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--zoo", default="default")
    ap.add_argument("--methods", default="task_arithmetic,ties")
    args = ap.parse_args()
    import pyarrow.parquet as pq

    out = Path(args.out)
    rows = []
    for order in ORDERS:
        run = out / order
        t0 = time.time()
        cmd = [sys.executable, "-m", "evomerge", "scale", "--zoo", args.zoo, "--out", str(run), "--no-progress",
               "--set", f"scale.order={order}", "--set", "scale.search=[]", "--set", "scale.with_rht=false",
               "--set", "scale.pairs=false", "--set", f"scale.methods=[{args.methods}]"]
        subprocess.run(cmd, check=True)
        f = pq.read_table(run / "tables" / "fitness.parquet").to_pandas()
        f = f[(f["kind"] == "merge") & (f["target"] == "all") & (f["split"] == "validation")]
        curve = f.groupby(["method", "k"])["fitness"].mean().reset_index()
        per = {m: {"peak": float(g["fitness"].max()), "peak_k": int(g.loc[g["fitness"].idxmax(), "k"]),
                   "mean_over_k": float(g["fitness"].mean())} for m, g in curve.groupby("method")}
        order_names = json.loads((run / "plan.json").read_text())["orders"]
        rows.append({"order": order, "seconds": round(time.time() - t0, 1), "methods": per,
                     "mean_peak": sum(v["peak"] for v in per.values()) / len(per),
                     "mean_curve": sum(v["mean_over_k"] for v in per.values()) / len(per),
                     "first_order": next(iter(order_names.values()))})
    rows.sort(key=lambda r: -r["mean_peak"])
    (out / "orders.json").write_text(json.dumps(rows, indent=2))
    for r in rows:
        print(f"{r['order']:16s} mean peak {r['mean_peak']:.4f}  mean over k {r['mean_curve']:.4f}  "
              + "  ".join(f"{m}: {v['peak']:.4f}@{v['peak_k']}" for m, v in r["methods"].items()) + f"  ({r['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
