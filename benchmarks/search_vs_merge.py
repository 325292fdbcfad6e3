"""GENOME and Model Swarms against the best single expert and the registry merges.

    nice -n 10 python benchmarks/search_vs_merge.py                 # k = 2,4,...,12, seeds 0 1 2
    python benchmarks/search_vs_merge.py --k 2 4 --seeds 0 --json   # a slice, as JSON records

On the shipped default zoo (``evomerge zoo path``; else the built default profile), for each k
and seed: k experts drawn by the seed, and two targets, the union of the k experts' tasks and
all tasks. Per target, every method is scored on validation and test:

* ``best_expert``: the single expert best on the target's validation;
* ``ta_1``: task arithmetic, lambda = 1; ``ta_best``: the lambda of a grid best on validation;
* ``ties`` / ``dare_ties``: the registry's defaults (lambda 1);
* ``genome`` / ``swarm``: a search at evomerge's defaults (the scale run's search settings and
  evaluation budget, ``evomerge.pipelines.scale.defaults``), its best individual by validation;
* ``genome_paper`` / ``swarm_paper``: the same with ``preset: paper``.

The searches run in this process, one evaluator per target (what one population actor does in
``evomerge evolve``); ``evals`` is the number of candidates a search scored, ``seconds`` its
wall time and ``cpu_s`` its CPU time (one torch thread: the time of one core, robust to load),
``sys_s`` the system part of it and ``minflt`` the minor page faults (the per-search rows of
``--raw``; ``fitness`` there is every individual's validation score). ``--trim`` hands free heap
pages back before each scored group, as a population actor does; ``--no-merges`` times the
searches alone. The evaluator keeps its freed pages mapped (``evomerge.evaluation.pages``;
``EVOMERGE_KEEP_FREED_PAGES=0`` runs with glibc's defaults, to compare).
The table prints mean and sd over seeds; ``--json`` prints the records ``{k, method, target,
split, mean, sd}`` (plus ``evals``, ``seconds`` and ``cpu_s`` for searches). ``--holdout`` adds the
split ``holdout``: ``best_expert``, ``ta_best`` and each search's choice scored on the validation
rows past ``max_samples``, which no search sees (how the scale run's GENOME budget was chosen
without test: a gain that holds there is not noise of the rows the search chose on).

Test is scored on every row of each task's test split (200 on the shipped zoo); the searches and
every choice still see only validation rows 0..max_samples-1. ``--test-rows 64`` scores test on
the first 64 rows, as before the fifth session (the evaluation config's ``max_samples`` then also
cut the test split); ``--test-rows all 64`` records both, the second as split ``test@64``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

LAMBDAS = (0.3, 0.5, 0.7, 1.0, 1.3, 1.6, 2.0)
SEARCH_METHODS = ("genome", "swarm", "genome_paper", "swarm_paper")
REGISTRY = ("ties", "dare_ties")


def open_zoo(profile: str, folder: Path | None = None):
    """``folder``, else the shipped default zoo when present (``evomerge zoo path``), else the built profile."""
    from evomerge.zoo.zoo import Zoo, ensure_zoo

    if folder is not None:
        return Zoo.open(folder), f"{folder}"
    shipped = Path(__file__).resolve().parents[1] / "evomerge" / "zoo" / "shipped" / profile
    if (shipped / "zoo.json").is_file():
        return Zoo.open(shipped), f"shipped {profile} ({shipped})"
    return ensure_zoo(profile), f"built {profile} profile"


class Bench:
    """The pool, one evaluator per task tuple, and the configs of the compared methods."""

    def __init__(self, zoo, base_cfg: dict[str, Any]) -> None:
        from evomerge.experts.pool import load_pool

        self.zoo = zoo
        self.pool = load_pool([zoo.expert_dirs[t] for t in zoo.tasks], base=zoo.base_dir, names=zoo.tasks)
        self.tasks = list(zoo.tasks)
        self.base_cfg = base_cfg
        self._evaluators: dict[tuple[str, ...], Any] = {}
        self._tv = [self.pool.task_vector(i) for i in range(len(self.tasks))]
        self.variants: dict[str, dict[str, Any]] = {}
        self.recheck = False
        self.with_holdout = False  # --holdout: every method also scored on the validation rows past max_samples
        self._holdout: dict[tuple[str, ...], Any] = {}
        self.test_rows: list[int | None] = [None]  # test rows per task (None: all); the first is split "test"
        self._test: dict[tuple[tuple[str, ...], int | None], Any] = {}
        self.trim = False  # --trim: free heap pages handed back before each scored group, as a population actor does

    def evaluator(self, tasks: tuple[str, ...]):
        if tasks not in self._evaluators:
            from evomerge.evaluation.evaluator import Evaluator

            ev = self.base_cfg["evaluation"]
            self._evaluators[tasks] = Evaluator.from_zoo(self.zoo, tasks=list(tasks), metric=ev["metric"],
                                                         max_samples=ev["max_samples"], batch_size=ev["batch_size"])
        return self._evaluators[tasks]

    def score(self, tasks, candidates, split) -> list[float]:
        return [r.fitness for r in self.evaluator(tasks).evaluate_many(candidates, split)]

    def test_evaluator(self, tasks: tuple[str, ...], rows: int | None):
        """The test split's first ``rows`` rows of every task (None: all of them). At the evaluation
        config's ``max_samples`` this is the search's own evaluator: the old measurement exactly."""
        if rows == self.base_cfg["evaluation"]["max_samples"]:
            return self.evaluator(tasks)
        if (tasks, rows) not in self._test:
            from evomerge.evaluation.evaluator import Evaluator

            ev = self.base_cfg["evaluation"]
            data = self.zoo.load_tasks(list(tasks), splits=("test",))
            self._test[(tasks, rows)] = Evaluator(self.zoo.base_dir, data, metric=ev["metric"], max_samples=rows,
                                                  batch_size=ev["batch_size"])
        return self._test[(tasks, rows)]

    def tests(self, tasks, candidates) -> list[dict[str, float]]:
        """Per candidate ``{"test": ..., "test@64": ...}``: one entry per ``test_rows`` (never used to choose)."""
        out: list[dict[str, float]] = [{} for _ in candidates]
        for j, rows in enumerate(self.test_rows):
            name = "test" if j == 0 else f"test@{'all' if rows is None else rows}"
            for o, r in zip(out, self.test_evaluator(tasks, rows).evaluate_many(candidates, "test")):
                o[name] = r.fitness
        return out

    # ---------------------------------------------------------------- registry merges
    def merges(self, idx: list[int], tasks: tuple[str, ...], seed: int) -> dict[str, dict[str, float]]:
        from evomerge.merging.apply import merge_tensordicts

        tvs = [self._tv[i] for i in idx]
        out: dict[str, dict[str, float]] = {}
        experts = [{k: v.clone() for k, v in tv.items()} for tv in tvs]
        val = self.score(tasks, experts, "validation")
        b = int(np.argmax(val))
        out["best_expert"] = {"validation": val[b], **self.tests(tasks, [experts[b]])[0]}
        total = {k: sum(tv[k] for tv in tvs) for k in tvs[0]}
        grid = [{k: lam * v for k, v in total.items()} for lam in LAMBDAS]
        gval = self.score(tasks, grid, "validation")
        one = LAMBDAS.index(1.0)
        out["ta_1"] = {"validation": gval[one], **self.tests(tasks, [grid[one]])[0]}
        j = int(np.argmax(gval))
        out["ta_best"] = {"validation": gval[j], **self.tests(tasks, [grid[j]])[0], "lambda": LAMBDAS[j]}
        if self.with_holdout:
            out["best_expert"]["holdout"], out["ta_best"]["holdout"] = self.held(tasks, [experts[b], grid[j]])
        for m in REGISTRY:
            merged = merge_tensordicts(m, tvs, seed=seed)
            out[m] = {"validation": self.score(tasks, [merged], "validation")[0], **self.tests(tasks, [merged])[0]}
        return out

    # ---------------------------------------------------------------- searches
    def search(self, method: str, idx: list[int], tasks: tuple[str, ...], seed: int) -> dict[str, float]:
        from evomerge.config import config_from_dict
        from evomerge.experts.types import ab_to_lora, lora_to_ab
        from evomerge.search import expert_id, make_search, materialize
        from evomerge.search.recipe import Phase

        kind, paper = method.split("_")[0], method.endswith("_paper")
        data = {kind: {"preset": "paper"}} if paper else {kind: dict(self.base_cfg.get(kind, {}))}
        if method in self.variants:  # --variant NAME=JSON: the defaults with these keys changed
            data = {kind: {**self.base_cfg.get(kind, {}), **self.variants[method]}}
        cfg = config_from_dict({**data, "seed": seed}, method)
        space = getattr(cfg, kind).space
        fan: dict[str, bool] = {}
        store = {}
        for j, i in enumerate(idx):
            if space == "delta":
                store[expert_id(j)] = self._tv[i]
            else:
                mods = self.pool.lora(i)
                fan.update({k: m.fan_in_fan_out for k, m in mods.items()})
                store[expert_id(j)] = lora_to_ab(mods)

        def cand(td):
            return ab_to_lora(td, fan) if space == "ab" else td

        s = make_search(kind, cfg, len(idx), seed)
        from evomerge.distributed.heap import release_free_heap
        from evomerge.evaluation.pages import keep_freed_pages

        evals, t0, c0, ru0 = 0, time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
        experts = set(store)
        start: tuple[float, str] | None = None  # the best initial individual (what select_margin guards)
        while not s.done:
            recipes = s.ask()
            first = s.phase == Phase.INIT
            for r in recipes:
                store.update(materialize(r, store))
            if self.trim:
                release_free_heap()
            fits = self.score(tasks, [cand(store[r.id]) for r in recipes], "validation")
            evals += len(recipes)
            s.tell({r.id: f for r, f in zip(recipes, fits)})
            if first:
                start = max((f, r.id) for r, f in zip(recipes, fits))
            keep = s.referenced_ids() | experts | {getattr(s, "top_id", None), start[1] if start else None}
            store = {k: v for k, v in store.items() if k in keep}
        seconds, cpu, ru1 = time.perf_counter() - t0, time.process_time() - c0, resource.getrusage(resource.RUSAGE_SELF)
        test = self.tests(tasks, [cand(store[s.best_id])])[0]
        out = {"validation": float(s.best_fitness), **test, "evals": evals, "seconds": seconds, "cpu_s": cpu,
               "sys_s": ru1.ru_stime - ru0.ru_stime, "minflt": ru1.ru_minflt - ru0.ru_minflt, "best_id": s.best_id,
               "fitness": {k: float(v) for k, v in s.fitness.items()}, "keep_freed_pages": keep_freed_pages()}
        top = getattr(s, "top_id", None)  # the best scored (what select_margin 0 returns): what the guard changed
        if top is not None:
            out["top"] = {"validation": float(s.top_fitness), "id": top,
                          **(test if top == s.best_id else self.tests(tasks, [cand(store[top])])[0])}
        if self.with_holdout:
            out["holdout"] = self.held(tasks, [cand(store[s.best_id])])[0]
            if top is not None:
                out["top"]["holdout"] = out["holdout"] if top == s.best_id else self.held(tasks, [cand(store[top])])[0]
        if self.recheck and start is not None:
            out["recheck"] = self._recheck(tasks, [start[1], s.best_id, top], store, cand, s.fitness)
        return out

    def _recheck(self, tasks, ids, store, cand, fitness) -> dict[str, Any]:
        """The diagnostic ``--recheck`` rule: the best start, the returned and the best scored
        individual re-scored on the validation rows the search never saw (rows max_samples..end
        of every task); the highest there is chosen (ties: the earlier of that order)."""
        ids = list(dict.fromkeys(i for i in ids if i is not None))
        c0 = time.process_time()
        held = self.holdout(tasks)
        scores = [r.fitness for r in held.evaluate_many([cand(store[i]) for i in ids], "validation")]
        j = int(np.argmax(scores))
        cpu = time.process_time() - c0
        chosen = ids[j]
        return {"validation": float(fitness[chosen]), "holdout": scores[j], "id": chosen, "start": ids[0],
                **self.tests(tasks, [cand(store[chosen])])[0], "extra_evals": len(ids), "extra_cpu_s": cpu}

    def held(self, tasks: tuple[str, ...], candidates) -> list[float]:
        """Fitness on the validation rows the search never saw (rows max_samples..end): a
        validation-only check of what a search's choice is worth beyond the rows it chose on."""
        return [r.fitness for r in self.holdout(tasks).evaluate_many(candidates, "validation")]

    def holdout(self, tasks: tuple[str, ...]):
        """An evaluator over the validation rows past ``max_samples`` (the search scores the first ones)."""
        if tasks not in self._holdout:
            from evomerge.evaluation.evaluator import Evaluator

            ev = self.base_cfg["evaluation"]
            n = int(ev["max_samples"])
            data = {t: {"validation": d["validation"].select(range(n, len(d["validation"])))}
                    for t, d in self.zoo.load_tasks(list(tasks), splits=("validation",)).items()}
            if any(len(d["validation"]) == 0 for d in data.values()):
                raise SystemExit(f"--recheck: a task of {tasks} has no validation rows past max_samples {n}")
            self._holdout[tasks] = Evaluator(self.zoo.base_dir, data, metric=ev["metric"], max_samples=None,
                                             batch_size=ev["batch_size"])
        return self._holdout[tasks]


def default_search_config() -> dict[str, Any]:
    """The scale run's search and evaluation settings (what ``evomerge scale`` runs by default)."""
    from evomerge.config import config_from_dict
    from evomerge.pipelines.scale.defaults import DEFAULT_SCALE_CONFIG

    cfg = config_from_dict(DEFAULT_SCALE_CONFIG, "scale defaults")
    return {"evaluation": cfg.evaluation.model_dump(mode="json"), "genome": dict(DEFAULT_SCALE_CONFIG.get("genome", {})),
            "swarm": dict(DEFAULT_SCALE_CONFIG.get("swarm", {}))}


def run(args) -> tuple[list[dict[str, Any]], str]:
    torch.set_num_threads(1)
    zoo, where = open_zoo(args.zoo, args.zoo_dir)
    base = default_search_config()
    bench = Bench(zoo, base)
    bench.recheck = args.recheck
    bench.with_holdout = args.holdout
    bench.trim = args.trim
    if len(set(args.test_rows)) != len(args.test_rows):
        raise SystemExit(f"--test-rows: a row count is given twice ({args.test_rows})")
    bench.test_rows = args.test_rows
    for v in args.variant:
        name, _, js = v.partition("=")
        if name.split("_")[0] not in ("genome", "swarm"):
            raise SystemExit(f"--variant {v}: the name must start with genome_ or swarm_")
        bench.variants[name] = json.loads(js)
    methods = list(args.methods) + list(bench.variants)
    n = len(bench.tasks)
    rows: list[dict[str, Any]] = []
    for k in args.k or [k for k in (2, 4, 6, 8, 10, 12) if k <= n]:
        if not 2 <= k <= n:
            raise SystemExit(f"--k: {k} is outside 2..{n} (the zoo has {n} experts)")
        for seed in args.seeds:
            idx = sorted(int(i) for i in np.random.default_rng(seed).choice(n, size=k, replace=False))
            targets = {"union": tuple(bench.tasks[i] for i in idx), "all": tuple(bench.tasks)}
            done: dict[tuple[str, ...], dict[str, Any]] = {}
            for target, tasks in targets.items():
                if target not in args.targets or (target == "all" and args.union_only):
                    continue
                if tasks in done:  # k = all experts: both targets are the same tasks
                    res = done[tasks]
                else:
                    res = done[tasks] = {} if args.no_merges else bench.merges(idx, tasks, seed)
                    for m in methods:
                        res[m] = bench.search(m, idx, tasks, seed)
                        top = res[m].pop("top", None)
                        if top is not None and not m.endswith("_paper"):
                            res[f"{m}@top"] = {k: v for k, v in top.items()}
                        recheck = res[m].pop("recheck", None)
                        if recheck is not None:
                            res[f"{m}@recheck"] = recheck
                for m, r in res.items():
                    rows.append({"k": k, "seed": seed, "method": m, "target": target, **r})
                if args.raw is not None:  # after every cell, so an interrupted run keeps what it measured
                    args.raw.write_text(json.dumps({"zoo": where, "rows": rows}, indent=1))
                if args.progress:
                    print(f"k={k} seed={seed} {target}: " + ", ".join(
                        f"{m} {r['test']:.4f}" for m, r in res.items()), file=sys.stderr, flush=True)
    return rows, where


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["k"], r["method"], r["target"]), []).append(r)
    out = []
    for (k, method, target), rs in groups.items():
        extra = sorted({s for r in rs for s in r if s.startswith("test@")})
        for split in ("validation", "test", *extra, "holdout"):
            if any(split not in r for r in rs):
                continue
            vals = [r[split] for r in rs]
            rec = {"k": k, "method": method, "target": target, "split": split, "mean": statistics.fmean(vals),
                   "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}
            if "evals" in rs[0]:
                rec["evals"] = statistics.fmean(r["evals"] for r in rs)
                rec["seconds"] = statistics.fmean(r["seconds"] for r in rs)
                rec["cpu_s"] = statistics.fmean(r["cpu_s"] for r in rs)
            out.append(rec)
    return out


def table(summary: list[dict[str, Any]]) -> str:
    """Markdown: one row per (k, target, method), validation and test as mean ± sd."""
    by = {(s["k"], s["target"], s["method"], s["split"]): s for s in summary}
    keys = sorted({(s["k"], s["target"], s["method"]) for s in summary},
                  key=lambda x: (x[0], x[1] != "union", _ORDER.index(x[2]) if x[2] in _ORDER else 99, x[2]))
    lines = ["| k | target | method | validation | test | evals | CPU s |", "|---|---|---|---|---|---|---|"]
    for k, target, method in keys:
        v, t = by[(k, target, method, "validation")], by[(k, target, method, "test")]
        extra = f"{v['evals']:.0f} | {v['cpu_s']:.1f}" if "evals" in v else " | "
        lines.append(f"| {k} | {target} | {method} | {v['mean']:.4f} ± {v['sd']:.4f} | "
                     f"{t['mean']:.4f} ± {t['sd']:.4f} | {extra} |")
    return "\n".join(lines)


def compact(summary: list[dict[str, Any]], split: str = "test") -> str:
    """Markdown: one row per (k, target), one column per method (``split`` mean ± sd)."""
    by = {(s["k"], s["target"], s["method"]): s for s in summary if s["split"] == split}
    methods = [m for m in _ORDER if any(key[2] == m for key in by)]
    methods += sorted({key[2] for key in by} - set(methods))
    cells = sorted({(k, t) for k, t, _ in by}, key=lambda x: (x[0], x[1] != "union"))
    lines = ["| k | target | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for k, t in cells:
        row = [f"{by[(k, t, m)]['mean']:.4f} ± {by[(k, t, m)]['sd']:.4f}" if (k, t, m) in by else "" for m in methods]
        lines.append(f"| {k} | {t} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def _rows(text: str) -> int | None:
    """``--test-rows``: a positive row count or ``all``."""
    if text == "all":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"--test-rows: {text!r} is neither a positive row count nor 'all'")
    return int(text)


_ORDER = ["best_expert", "ta_1", "ta_best", "ties", "dare_ties", "genome", "swarm", "genome_paper", "swarm_paper"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, nargs="+", default=None, help="default: 2, 4, ..., 12 (up to the pool size)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="*", default=list(SEARCH_METHODS), choices=SEARCH_METHODS,
                    help="search methods to run (the single expert and registry merges always run)")
    ap.add_argument("--zoo", default="default", help="zoo profile (the shipped one is used when present)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                    help='an extra search: genome_x={"space": "delta"} runs GENOME at the defaults with those keys')
    ap.add_argument("--zoo-dir", type=Path, default=None, help="a zoo folder (overrides --zoo)")
    ap.add_argument("--union-only", action="store_true", help="only the union-of-k-tasks target")
    ap.add_argument("--targets", nargs="+", default=["union", "all"], choices=["union", "all"],
                    help="targets to measure (split a long grid into runs)")
    ap.add_argument("--recheck", action="store_true",
                    help="diagnostic: also choose between the best start, the returned and the best scored "
                         "individual on the validation rows past max_samples (method NAME@recheck)")
    ap.add_argument("--holdout", action="store_true",
                    help="also score best_expert, ta_best and every search's choice on the validation rows past "
                         "max_samples (split 'holdout'; never used for any choice)")
    ap.add_argument("--test-rows", type=_rows, nargs="+", default=[None], metavar="N|all",
                    help="test rows per task (default all); `64`: the first 64 (the measurement before the fifth "
                         "session); further values add splits test@N (e.g. `all 64`)")
    ap.add_argument("--trim", action="store_true",
                    help="hand free heap pages back before each scored group, as a population actor does "
                         "(evomerge.distributed.heap)")
    ap.add_argument("--no-merges", action="store_true",
                    help="only the searches (to time them; the table then has no merge rows)")
    ap.add_argument("--json", action="store_true", help="print the records as JSON instead of the table")
    ap.add_argument("--raw", type=Path, default=None, help="also write every per-seed row to this JSON file")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    rows, where = run(args)
    if args.raw is not None:
        args.raw.write_text(json.dumps({"zoo": where, "rows": rows}, indent=1))
    summary = summarise(rows)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"zoo: {where}; seeds {args.seeds}")
        print(table(summary))
        rows_name = "all rows" if args.test_rows[0] is None else f"the first {args.test_rows[0]} rows"
        print(f"\ntest ({rows_name} per task), mean ± sd over seeds:\n{compact(summary)}")
        for split in sorted({r["split"] for r in summary} - {"validation", "test"}):
            print(f"\n{split}, mean ± sd over seeds:\n{compact(summary, split)}")


if __name__ == "__main__":
    main()
