"""RHT's cost against no RHT on a scale run's merge cells, at any RHT constants, without rerunning
the scale experiment: the run's own cells (plan.json, config.yaml) are recomputed by the scale
driver's ``CellWorker`` (same merges, same noise replicates, same evaluator), plain and with RHT
at the given constants, on validation (``--test`` adds test). Reads the run directory only.

    nice -n 10 python benchmarks/rht_bound_check.py RUN_DIR [--rht gamma=0.99 alpha=0.05 ...]
        [--methods task_arithmetic,ties] [--ks 8,9,10] [--test] [--json out.json]

Printed per cell: RHT - plain on the ``all`` target (mean over every task of the pool); then, per
split and target (``all``, and ``union``: the merged experts' tasks), the worst (method, k) mean over
seeds, the worst seed and each method's range over k. Plain cells are
checked against the run's stored scores (they must agree: same code path).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import yaml


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--rht", nargs="*", default=[], help="RHTConfig overrides, KEY=VALUE")
    ap.add_argument("--methods", default="")
    ap.add_argument("--ks", default="")
    ap.add_argument("--test", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from evomerge.config import config_from_dict
    from evomerge.pipelines.scale.driver import make_context, pool_spec
    from evomerge.pipelines.scale.plan import load_cells
    from evomerge.pipelines.scale.report import load_run
    from evomerge.pipelines.scale.work import CellWorker

    plan, scores, _ = load_run(args.run_dir)
    cfg = config_from_dict(yaml.safe_load((args.run_dir / "config.yaml").read_text()), str(args.run_dir / "config.yaml"))
    over = {}
    for item in args.rht:
        k, _, v = item.partition("=")
        over[k] = yaml.safe_load(v)
    rht = cfg.rht.model_copy(update=over)
    type(cfg.rht).model_validate(rht.model_dump())  # constants out of their domain: refused here
    spec = pool_spec(cfg)  # the config's experts, else the built-in zoo (plan.json's zoo_profile)
    if list(spec.names) != list(plan["experts"]):
        raise SystemExit(f"{args.run_dir}: its experts {plan['experts']} are not this pool's {spec.names}")
    ctx = dataclasses.replace(make_context(cfg, spec, args.run_dir), rht=rht, threads=args.threads)
    worker = CellWorker(ctx)
    methods = set(filter(None, args.methods.split(","))) or None
    ks = {int(k) for k in args.ks.split(",") if k} or None
    splits = ["validation", "test"] if args.test else ["validation"]
    stored = scores.groupby(["cell", "seed", "rht", "split"])["score"].mean()

    all_cells = load_cells(plan)
    cells = [c for c in all_cells if c.kind == "merge" and c.rht
             and (methods is None or c.method in methods) and (ks is None or c.k in ks)]
    rows, mismatch, t0 = [], 0, time.perf_counter()
    plain_scores: dict[tuple[str, int, str], dict[str, float]] = {}

    def targets(per_task, cell):
        """(all, union): mean over every task, over the merged experts' tasks."""
        mine = {ctx.expert_tasks[i] for i in cell.experts}
        return (statistics.mean(v for v, _ in per_task.values()),
                statistics.mean(v for t, (v, _) in per_task.items() if t in mine))

    def plain(cell, seed, split):
        if (cell.id, seed, split) not in plain_scores:
            cand, _ = worker.candidate(worker.merged(cell.method, cell.experts, seed), cell.experts, False, seed)
            plain_scores[(cell.id, seed, split)] = targets(worker.evaluate(cand, split), cell)
        return plain_scores[(cell.id, seed, split)]

    for c in cells:
        first = len(rows)
        plains = [p for p in all_cells if p.kind == "merge" and not p.rht and p.method == c.method
                  and p.k == c.k and p.experts == c.experts]
        for seed in c.seeds:
            # the plain cell of the same seed (random merges: the same drops); a deterministic
            # merge has only one plain seed
            plain_cell = next((p for p in plains if seed in p.seeds), plains[0])
            pseed = seed if seed in plain_cell.seeds else plain_cell.seeds[0]
            rht_cand, _ = worker.candidate(worker.merged(c.method, c.experts, seed), c.experts, True, seed)
            for split in splits:
                (p, pu), (r, ru) = plain(plain_cell, pseed, split), targets(worker.evaluate(rht_cand, split), c)
                ref = stored.get((plain_cell.id, pseed, False, split))
                if ref is not None and abs(ref - p) > 1e-6:
                    mismatch += 1
                rows.append({"method": c.method, "k": c.k, "seed": seed, "split": split, "plain": p, "rht": r, "diff": r - p,
                             "diff_union": ru - pu})
        print(f"{c.id:28s} " + " ".join(f"{x['split'][:4]} {x['diff']:+.4f}" for x in rows[first:]), flush=True)
    print(f"{len(cells)} cells in {time.perf_counter() - t0:.0f} s; plain scores that differ from the run's: {mismatch}")
    print(f"rht: {json.dumps(rht.model_dump(mode='json'))}")
    for split, field in [(sp, f) for f in ("diff", "diff_union") for sp in splits]:
        groups: dict[tuple[str, int], list[float]] = {}
        for x in rows:
            if x["split"] == split:
                groups.setdefault((x["method"], x["k"]), []).append(x[field])
        means = {g: statistics.mean(d) for g, d in groups.items()}
        worst_mean = min(means, key=means.get)
        worst_seed = min(groups, key=lambda g: min(groups[g]))
        print(f"{split} ({'all' if field == 'diff' else 'union'}): worst cell mean {means[worst_mean]:+.4f} ({worst_mean[0]} k={worst_mean[1]}); "
              f"worst seed {min(groups[worst_seed]):+.4f} ({worst_seed[0]} k={worst_seed[1]})")
        for m in sorted({g[0] for g in groups}):
            ms = [v for g, v in means.items() if g[0] == m]
            print(f"  {m:16s} mean over k {statistics.mean(ms):+.4f}, cells {min(ms):+.4f}..{max(ms):+.4f}")
    if args.json:
        args.json.write_text(json.dumps({"run_dir": str(args.run_dir), "rht": rht.model_dump(mode="json"),
                                         "mismatch": mismatch, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
