"""RHT's sensitivity: validation fitness of an RHT study's trials against gamma, sigma_g and alpha
(and beta), with the no-RHT fitness and the frozen defaults marked.

    python benchmarks/rht_sensitivity.py RUN_DIR --baseline 0.6353 [--default gamma=0.9 ...]
        [--out docs/images/rht_sensitivity.png] [--title TEXT]

RUN_DIR is an ``evomerge tune`` run directory (its ``trials.parquet``), e.g. of
``jobs/configs/tune_rht.yaml``; ``--baseline`` the same merge's validation fitness without RHT.
"""

from __future__ import annotations

import argparse
from pathlib import Path

PARAMS = ("gamma", "sigma_g", "alpha", "beta")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--baseline", type=float, required=True, help="validation fitness without RHT")
    ap.add_argument("--default", nargs="*", default=[], help="frozen defaults, KEY=VALUE")
    ap.add_argument("--out", type=Path, default=Path("docs/images/rht_sensitivity.png"))
    ap.add_argument("--title", default="")
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    trials = pd.read_parquet(args.run_dir / "trials.parquet")
    trials = trials[trials["state"] == "COMPLETE"]
    defaults = {k: float(v) for k, v in (d.split("=", 1) for d in args.default)}
    cols = [p for p in PARAMS if f"param.rht.{p}" in trials]
    fig, axes = plt.subplots(1, len(cols), figsize=(3.6 * len(cols), 3.2), sharey=True)
    for ax, p in zip(axes, cols):
        x = trials[f"param.rht.{p}"]
        ax.scatter(x, trials["value"], s=14, alpha=0.7, label="trial")
        ax.axhline(args.baseline, color="k", lw=1, ls="--", label="no RHT")
        ax.axhline(args.baseline - 0.002, color="r", lw=0.8, ls=":", label="no RHT - 0.002")
        if p in defaults:
            ax.axvline(defaults[p], color="g", lw=1, label="default")
        if p == "beta":
            ax.set_xscale("log")
        ax.set_xlabel(p)
    axes[0].set_ylabel("validation fitness")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(args.title or f"RHT study: {len(trials)} trials ({args.run_dir.name})", fontsize=10)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
