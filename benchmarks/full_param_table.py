"""The seed paper's Table 4 on evomerge's zoo: every full fine-tune expert merged at once by weight
averaging, Fisher, RegMean, TIES, task arithmetic and EMR, each without and with RHT (one draw of
RHT's noise per seed), scored on the zoo tasks' test (and validation) splits. ``--kind lora``
runs the same table on the zoo's LoRA experts.

    nice -n 10 python benchmarks/full_param_table.py [--zoo default|small|PATH] [--kind full|lora] [--seeds 5]
        [--samples 200] [--stats-samples 64] [--threads 2] [--rht KEY=VALUE ...]
        [--param METHOD.KEY=VALUE ...] [--json out.json]

Fisher and RegMean statistics are computed once per expert on its task's train split. EMR serves
each task with that task's masked, rescaled vector (its per-task state), as EMR-merging does;
RHT transforms EMR's unified vector, before the masks and rescalers.
RHT uses the config's constants (``evomerge.config.RHTConfig`` defaults, ``--rht`` overrides) on
the dense merged task vector; seed r draws replicate r of the config's noise
(``evomerge.seeding.rht_seed``). Printed: a markdown table (mean test score over tasks; with RHT
mean and sd over seeds, and the difference to the plain merge) and per-task rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import yaml

METHODS = ("weight_average", "fisher", "regmean", "ties", "task_arithmetic", "emr")
# evomerge's fixed choices for the table (documented in docs/merging.md): task arithmetic's usual
# lambda for many experts; the rest are the registry's defaults
PARAMS = {"task_arithmetic": {"lambda": 0.3}}


def _kv(items: list[str], what: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"{what}: expected KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out


def open_zoo(choice: str):
    from evomerge.zoo import Zoo
    from evomerge.zoo.zoo import shipped_root

    if Path(choice).is_dir():
        return Zoo.open(Path(choice), verify=False)
    root = shipped_root(choice, 0)
    if root is None:
        raise SystemExit(f"no shipped zoo `{choice}` (evomerge zoo path); give its folder")
    return Zoo.open(root, verify=False)


def candidates(merged, tasks: list[str], rht_cfg, seed: int | None):
    """What the evaluator scores: one task vector, or (EMR) each task's own vector."""
    from evomerge.evaluation import PerTask
    from evomerge.merging.types import PerTaskMerge
    from evomerge.merging.rht import apply_rht
    from evomerge.seeding import rht_seed

    def post(td):
        return td if seed is None else apply_rht(td, rht_cfg, rht_seed(rht_cfg.seed, seed))

    merged = post(merged)  # EMR: RHT on the unified vector, masks and rescalers kept (as `evomerge merge`)
    if not isinstance(next(iter(merged.values())), PerTaskMerge):
        return merged
    return PerTask({t: {k: v.task_delta(i) for k, v in merged.items()} for i, t in enumerate(tasks)})


def train_splits(zoo_root: Path, tasks) -> list[Path]:
    """Each expert's train split (the zoo's experts are named by their tasks); an expert without one
    is refused with its name (the scale driver's check)."""
    from evomerge.pipelines.scale.statistics import train_files

    return train_files(list(tasks), list(tasks), zoo_root, None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default="default")
    ap.add_argument("--kind", choices=("full", "lora"), default="full",
                    help="the zoo's full fine-tunes (Table 4) or its LoRA experts (merged as dense deltas B@A)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--samples", type=int, default=200, help="test/validation examples per task")
    ap.add_argument("--stats-samples", type=int, default=64, help="train examples per expert for Fisher/RegMean")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--rht", nargs="*", default=[], help="RHTConfig overrides, KEY=VALUE")
    ap.add_argument("--param", nargs="*", default=[], help="METHOD.KEY=VALUE")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from evomerge.config.sections import RHTConfig
    from evomerge.evaluation import Evaluator
    from evomerge.experts import load_pool
    from evomerge.experts.statistics import pool_statistics
    from evomerge.merging import get_merge_method
    from evomerge.merging.apply import merge_task_vectors

    zoo = open_zoo(args.zoo)
    tasks = zoo.tasks
    dirs = zoo.full_dirs if args.kind == "full" else zoo.expert_dirs
    if not dirs:
        raise SystemExit(f"{zoo.root}: this zoo has no full fine-tune experts")
    rht_cfg = RHTConfig(**{**_kv(args.rht, "--rht"), "enabled": True})
    params = {m: dict(p) for m, p in PARAMS.items()}
    for k, v in _kv(args.param, "--param").items():
        m, _, key = k.partition(".")
        params.setdefault(m, {})[key] = v
    methods = [m for m in args.methods.split(",") if m]
    needs = set().union(*(get_merge_method(m).needs for m in methods))
    # Fisher / RegMean: every expert's train split found before any work, else refused naming the expert
    train = train_splits(zoo.root, tasks) if needs else []
    pool = load_pool([dirs[t] for t in tasks], base=zoo.base_dir, names=tasks)
    ev = Evaluator.from_zoo(zoo, max_samples=args.samples)
    stats = None
    t0 = time.perf_counter()
    if needs:
        stats = pool_statistics(pool, needs, train, args.stats_samples)
    stats_s = time.perf_counter() - t0

    rows = []
    base = {sp: ev.evaluate({}, split=sp) for sp in ("validation", "test")}
    rows.append({"method": "base", "rht": False, "seed": None,
                 **{sp: {"per_task": r.per_task, "mean": r.fitness} for sp, r in base.items()}})
    for m in methods:
        mm = get_merge_method(m)
        merged = merge_task_vectors(mm, pool.iter_stacked(), None, params.get(m, {}), 0,
                                    stats=stats if mm.needs else None)
        for seed in [None, *range(args.seeds)]:
            cand = candidates(merged, tasks, rht_cfg, seed)
            res = {sp: ev.evaluate(cand, split=sp) for sp in ("validation", "test")}
            rows.append({"method": m, "rht": seed is not None, "seed": seed,
                         **{sp: {"per_task": r.per_task, "mean": r.fitness} for sp, r in res.items()}})
            print(f"{m:16s} {'rht s' + str(seed) if seed is not None else 'plain':8s} "
                  f"val {res['validation'].fitness:.4f} test {res['test'].fitness:.4f}", flush=True)

    print()
    print(table(rows, methods))
    out = {"zoo": str(zoo.root), "kind": args.kind, "tasks": tasks, "rht": rht_cfg.model_dump(mode="json"), "params": params,
           "samples": args.samples, "stats_samples": args.stats_samples, "stats_seconds": stats_s, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


def table(rows: list[dict], methods: list[str], split: str = "test") -> str:
    """Markdown: plain mean, RHT mean and sd over seeds, difference (on ``split``); validation plain,
    with RHT, and RHT - plain (mean and worst seed: the 0.002 bound of docs/merging.md)."""
    lines = [f"| method | plain ({split}) | +RHT mean | +RHT sd | RHT - plain | validation plain | validation +RHT | "
             "validation RHT - plain (worst seed) |",
             "|---|---|---|---|---|---|---|---|"]
    base = next(r for r in rows if r["method"] == "base")
    lines.append(f"| base model | {base[split]['mean']:.4f} | | | | {base['validation']['mean']:.4f} | | |")
    for m in methods:
        plain = next(r for r in rows if r["method"] == m and not r["rht"])
        rht = [r for r in rows if r["method"] == m and r["rht"]]
        t = [r[split]["mean"] for r in rht]
        v = [r["validation"]["mean"] for r in rht]
        sd = statistics.stdev(t) if len(t) > 1 else 0.0
        pv = plain["validation"]["mean"]
        lines.append(f"| {m} | {plain[split]['mean']:.4f} | {statistics.mean(t):.4f} | {sd:.4f} | "
                     f"{statistics.mean(t) - plain[split]['mean']:+.4f} | {pv:.4f} | {statistics.mean(v):.4f} | "
                     f"{statistics.mean(v) - pv:+.4f} ({min(v) - pv:+.4f}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
