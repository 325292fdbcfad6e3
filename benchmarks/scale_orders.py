"""Which expert order gives the best curve? `evomerge scale` once per order, registry merges only.

    python benchmarks/scale_orders.py --out runs/orders [--zoo default] [--methods task_arithmetic,ties]

Each order (given, random, low_correlation, gain) runs the registry merges to the whole pool
(no searches, no RHT, no pairs; 3 seeds, which only matter for `random`). Per order and method:
the peak validation fitness on all tasks (seed mean) and the mean over k of the curve; the
order with the best mean peak over methods is printed first. Writes ``<out>/orders.json`` and
``<out>/orders.png`` (validation fitness on all tasks vs k, one panel per method, one line per
order: the seed mean, the seeds' range shaded). ``--plot-only`` redraws from finished runs.
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
    ap.add_argument("--plot-only", action="store_true", help="only redraw orders.png from the runs under --out")
    args = ap.parse_args()
    if args.plot_only:
        plot(Path(args.out))
        return 0
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
    plot(out)
    for r in rows:
        print(f"{r['order']:16s} mean peak {r['mean_peak']:.4f}  mean over k {r['mean_curve']:.4f}  "
              + "  ".join(f"{m}: {v['peak']:.4f}@{v['peak_k']}" for m, v in r["methods"].items()) + f"  ({r['seconds']} s)")
    return 0


def plot(out: Path) -> Path:
    """``orders.png``: per method, the seed-mean validation fitness on all tasks against k for each order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pyarrow.parquet as pq

    curves = {}
    for order in ORDERS:
        f = pq.read_table(out / order / "tables" / "fitness.parquet").to_pandas()
        f = f[(f["kind"] == "merge") & (f["target"] == "all") & (f["split"] == "validation") & (~f["rht"])]
        curves[order] = f.groupby(["method", "k"])["fitness"].agg(["mean", "min", "max"]).reset_index()
    methods = sorted(set().union(*(set(c["method"]) for c in curves.values())))
    fig, axes = plt.subplots(1, len(methods), figsize=(5.5 * len(methods), 4), squeeze=False)
    for ax, method in zip(axes[0], methods):
        for order, c in curves.items():
            g = c[c["method"] == method]
            (line,) = ax.plot(g["k"], g["mean"], marker="o", label=order)
            ax.fill_between(g["k"], g["min"], g["max"], alpha=0.15, color=line.get_color())
        ax.set_title(method)
        ax.set_xlabel("k (experts merged)")
        ax.set_ylabel("validation fitness, all tasks")
        ax.grid(alpha=0.3)
    axes[0][0].legend(title="order")
    fig.tight_layout()
    path = out / "orders.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
