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


class BoundCells:
    """A scale run's RHT merge cells, recomputable by the scale worker at any RHT constants, each
    paired with its plain cell (same seed for random merges; a deterministic merge's one plain
    seed). Plain scores are computed once and checked against the run's stored ones
    (``mismatch`` counts those that differ); merged vectors are cached (RHT acts after the merge)."""

    def __init__(self, run_dir: Path, rht=(), *, threads: int = 2, methods=None, ks=None):
        import torch

        torch.set_num_threads(threads)
        from evomerge.config import config_from_dict
        from evomerge.config.overrides import parse_sets
        from evomerge.pipelines.scale.driver import make_context, pool_spec
        from evomerge.pipelines.scale.plan import load_cells
        from evomerge.pipelines.scale.report import load_run
        from evomerge.pipelines.scale.work import CellWorker

        plan, scores, _ = load_run(run_dir)
        cfg = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()), str(run_dir / "config.yaml"))
        self.rht = self.constants(cfg.rht, rht if isinstance(rht, dict) else parse_sets(list(rht), "--rht"))
        spec = pool_spec(cfg)  # the config's experts, else the built-in zoo (plan.json's zoo_profile)
        if list(spec.names) != list(plan["experts"]):
            raise SystemExit(f"{run_dir}: its experts {plan['experts']} are not this pool's {spec.names}")
        self.ctx = dataclasses.replace(make_context(cfg, spec, run_dir), rht=self.rht, threads=threads)
        self.worker = CellWorker(self.ctx)
        self.stored = scores.groupby(["cell", "seed", "rht", "split"])["score"].mean()
        self.all_cells = load_cells(plan)
        self.cells = [c for c in self.all_cells if c.kind == "merge" and c.rht
                      and (methods is None or c.method in methods) and (ks is None or c.k in ks)]
        self.mismatch = 0
        self._plain: dict[tuple[str, int, str], tuple[float, float]] = {}
        self._merged: dict[tuple[str, tuple[int, ...], int], object] = {}

    @staticmethod
    def constants(base, over: dict):
        """``base`` (an RHTConfig) with ``over`` applied; constants out of their domain refused."""
        return type(base).model_validate({**base.model_dump(), **over})  # validated: "2e-05" is a float

    def targets(self, per_task, cell) -> tuple[float, float]:
        """(all, union): mean over every task, over the merged experts' tasks."""
        mine = {self.ctx.expert_tasks[i] for i in cell.experts}
        return (statistics.mean(v for v, _ in per_task.values()),
                statistics.mean(v for t, (v, _) in per_task.items() if t in mine))

    def merged(self, method: str, experts, seed: int):
        key = (method, tuple(experts), seed)
        if key not in self._merged:
            self._merged[key] = self.worker.merged(method, experts, seed)
        return self._merged[key]

    def plain_of(self, cell, seed: int):
        plains = [p for p in self.all_cells if p.kind == "merge" and not p.rht and p.method == cell.method
                  and p.k == cell.k and p.experts == cell.experts]
        plain_cell = next((p for p in plains if seed in p.seeds), plains[0])
        return plain_cell, (seed if seed in plain_cell.seeds else plain_cell.seeds[0])

    def plain(self, cell, seed: int, split: str) -> tuple[float, float]:
        plain_cell, pseed = self.plain_of(cell, seed)
        key = (plain_cell.id, pseed, split)
        if key not in self._plain:
            cand, _ = self.worker.candidate(self.merged(plain_cell.method, plain_cell.experts, pseed),
                                            plain_cell.experts, False, pseed)
            self._plain[key] = self.targets(self.worker.evaluate(cand, split), plain_cell)
            ref = self.stored.get((plain_cell.id, pseed, False, split))
            if ref is not None and abs(ref - self._plain[key][0]) > 1e-6:
                self.mismatch += 1
        return self._plain[key]

    def row(self, cell, seed: int, split: str, rht=None) -> dict:
        """RHT - plain of one cell seed on one split at ``rht`` (default: this check's constants)."""
        if rht is not None:
            self.worker.ctx = dataclasses.replace(self.ctx, rht=rht)
        try:
            cand, _ = self.worker.candidate(self.merged(cell.method, cell.experts, seed), cell.experts, True, seed)
        finally:
            self.worker.ctx = self.ctx
        (p, pu), (r, ru) = self.plain(cell, seed, split), self.targets(self.worker.evaluate(cand, split), cell)
        return {"method": cell.method, "k": cell.k, "seed": seed, "split": split, "plain": p, "rht": r,
                "diff": r - p, "diff_union": ru - pu}


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
    cells = BoundCells(args.run_dir, args.rht, threads=args.threads,
                       methods=set(filter(None, args.methods.split(","))) or None,
                       ks={int(k) for k in args.ks.split(",") if k} or None)
    rht = cells.rht
    splits = ["validation", "test"] if args.test else ["validation"]
    rows, t0 = [], time.perf_counter()
    for c in cells.cells:
        first = len(rows)
        for seed in c.seeds:
            for split in splits:
                rows.append(cells.row(c, seed, split))
        print(f"{c.id:28s} " + " ".join(f"{x['split'][:4]} {x['diff']:+.4f}" for x in rows[first:]), flush=True)
    print(f"{len(cells.cells)} cells in {time.perf_counter() - t0:.0f} s; plain scores that differ from the run's: {cells.mismatch}")
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
                                         "mismatch": cells.mismatch, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
