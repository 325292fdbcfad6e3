"""RHT's constants chosen under the 0.002 bound: an Optuna study whose trials recompute a scale
run's RHT merge cells (every method, k and seed; ``rht_bound_check.BoundCells``) on validation
and whose constraint is the **worst** cell seed's change against no RHT on either target (``all``:
every task; ``union``: the merged experts' tasks), not the mean. Objective (maximised): the mean
change over all cell seeds and both targets. Test is never computed here.

    nice -n 10 python benchmarks/rht_bound_study.py RUN_DIR --out DIR [--n-trials 20]
        [--timeout 600] [--bound 0.002] [--space gamma=0.999:1 beta=1:1000:log ...]
        [--enqueue gamma=0.995,sigma_g=0.00002,alpha=0.01,beta=30 ...]

Resumable: the study lives in ``DIR/study.db`` (SQLite); rerun the command to add trials. A trial
stops at the first cell seed below ``-bound`` (infeasible; its values are those of the cells it
scored). Cells go in order of k (k = 1 first: one task's validation sample, the coarsest).
Written: ``DIR/trials.json`` (every trial), ``DIR/best.json`` (the best feasible trial).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from evomerge.config.overrides import parse_sets

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rht_bound_check import BoundCells  # noqa: E402

SPACE = {  # a neighbourhood of the identity (gamma 1, alpha 0, sigma_g 0) holding the old defaults
    "gamma": (0.97, 1.0, False),
    "sigma_g": (0.0, 0.0002, False),
    "alpha": (0.0, 0.1, False),
    "beta": (1.0, 1000.0, True),
}


def score_trial(cells: BoundCells, rht, bound: float) -> dict:
    """Validation changes of every cell seed at ``rht``; stops at the first one below ``-bound``."""
    diffs, worst, where = [], 0.0, None
    for c in sorted(cells.cells, key=lambda c: (c.k, c.method, c.id)):
        for seed in c.seeds:
            r = cells.row(c, seed, "validation", rht)
            for target, d in (("all", r["diff"]), ("union", r["diff_union"])):
                diffs.append(d)
                if d < worst:
                    worst, where = d, f"{c.method} k={c.k} seed={seed} {target}"
            if worst < -bound:
                return {"worst": worst, "where": where, "mean": statistics.mean(diffs), "n": len(diffs), "complete": False}
    return {"worst": worst, "where": where, "mean": statistics.mean(diffs), "n": len(diffs), "complete": True}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n-trials", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds of trials in this call")
    ap.add_argument("--bound", type=float, default=0.002)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--space", nargs="*", default=[], help="ranges replacing SPACE's, KEY=LOW:HIGH[:log]")
    ap.add_argument("--enqueue", nargs="*", default=[],
                    help="first trials of a new study, each KEY=VALUE,KEY=VALUE (e.g. the current defaults)")
    args = ap.parse_args()

    import optuna

    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cells = BoundCells(args.run_dir, threads=args.threads)
    base = cells.rht

    def constraint(trial) -> tuple[float]:
        return (-args.bound - trial.user_attrs["worst"],)  # <= 0: feasible

    sampler = optuna.samplers.TPESampler(seed=args.seed, constraints_func=constraint, n_startup_trials=8)
    study = optuna.create_study(study_name="rht_bound", storage=f"sqlite:///{args.out / 'study.db'}",
                                direction="maximize", sampler=sampler, load_if_exists=True)
    space = dict(SPACE)
    for item in args.space:
        key, _, rng = item.partition("=")
        lo, hi, *log = rng.split(":")
        space[key] = (float(lo), float(hi), log == ["log"])
    if not study.trials:
        for trial in args.enqueue:
            study.enqueue_trial({k: float(v) for k, v in parse_sets(trial.split(","), "--enqueue").items()})

    def objective(trial) -> float:
        over = {k: trial.suggest_float(k, lo, hi, log=log) for k, (lo, hi, log) in space.items()}
        t = time.perf_counter()
        res = score_trial(cells, BoundCells.constants(base, over), args.bound)
        for k, v in res.items():
            trial.set_user_attr(k, v)
        trial.set_user_attr("seconds", time.perf_counter() - t)
        print(f"trial {trial.number}: {json.dumps(over)} worst {res['worst']:+.4f} ({res['where']}) "
              f"mean {res['mean']:+.5f} over {res['n']}{'' if res['complete'] else ' (stopped)'} "
              f"{time.perf_counter() - t:.0f} s", flush=True)
        return res["mean"]

    study.optimize(objective, n_trials=args.n_trials, timeout=args.timeout)
    rows = [{"number": t.number, "params": t.params, "value": t.value, **t.user_attrs}
            for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    feasible = [r for r in rows if r["complete"] and r["worst"] >= -args.bound]
    best = max(feasible, key=lambda r: r["value"]) if feasible else None
    (args.out / "trials.json").write_text(json.dumps(rows, indent=1))
    (args.out / "best.json").write_text(json.dumps({"run_dir": str(args.run_dir), "bound": args.bound, "best": best,
                                                    "trials": len(rows), "feasible": len(feasible),
                                                    "plain_mismatch": cells.mismatch}, indent=1))
    print(f"{len(rows)} trials ({len(feasible)} feasible) in {time.perf_counter() - t0:.0f} s; "
          f"plain scores that differ from the run's: {cells.mismatch}")
    print("best feasible:", json.dumps(best))


if __name__ == "__main__":
    main()
