"""Choose the law's noise tolerance (``scale.law_noise_z``) on synthetic noisy curves only.

    python benchmarks/law_noise_synthetic.py [--curves 2000] [--z 0,0.5,1,1.5,2,3] [--seed 0]

Each curve is a *true* accuracy curve over k = 1..10 with a known peak, evaluated on T = 10
tasks x n = 64 examples (the zoo's validation: 640 rows) with per-example noise that the
points share, as a real evaluation does (the same examples at every k):
``x[k, t, r] = true_t(k) + sigma (sqrt(rho) u[t, r] + sqrt(1 - rho) e[k, t, r])``, u and e
standard normal; sigma in {0.07, 0.14, 0.28}, rho in {0.5, 0.75, 0.9} (the default run's
validation: a point's SE about 0.0055, a paired one-step difference's about 0.004, i.e.
sigma ~ 0.14, rho ~ 0.75). The base model is a point k = 0 on the same examples. True curves
(``a1 + D f(k)``, first gain over the base G in 0.01-0.15, D = 0.3-2 G):

* ``peaked``: ``f = 1 - k^-b - c (k - 1)``, c set so the real-valued peak lies in 1-14;
* ``turn``: ``f = 1 - k^-b - s max(0, k - p)``, p in 1..9 (a sharp turn after the peak);
* ``rising``: ``f = 1 - k^-b`` (the true peak is the last k: a curve still rising beyond m);
* ``at1``: the second expert already loses (peak 1);
* ``flat``: D = 0 (no peak; the law should answer a small k).

The law is fitted on k <= 4 (loss = minus the measured accuracy, one point per k, the
deterministic methods' case) exactly as the scale report fits it; its tolerance is
``max(0.02 x measured first gain, z x SE)``, SE from :func:`evomerge.evaluation.bootstrap.paired_se`
on the per-example values of k <= 4 only, combined over the 3 steps as ``rms`` or ``last``
(:func:`evomerge.theory.online_rule.step_se`). z = 0 is the rule before.

Printed per (SE definition, z): over non-flat curves, within +-1 of the true peak (the
pre-registered criterion; docs/scale.md, "A tolerance that knows the evaluation noise"), its
paired difference from z = 0 with the Monte-Carlo SE of that difference, within +-1 of the measured (noisy argmax) peak, more than 2
past the true peak, the mean regret (true best value minus the true value at the predicted k,
in units of G); over ``rising`` curves the share predicted >= 6 (the rule can still say
"later"); over flat curves the share predicted <= 2. Then the criterion split by family.
Writes nothing.

Outcome (2026-11-28, commit 290a75c): every z > 0 is worse than z = 0 on the pre-registered
criterion (0.561 at z = 0; -0.039 to -0.178 for z = 0.5-3), so `scale.law_noise_z` stays 0;
the table is in docs/benchmarks.md ("The law's noise floor"), the reading in docs/scale.md.
"""

from __future__ import annotations

import argparse

import numpy as np

from evomerge.evaluation.bootstrap import paired_se
from evomerge.theory.online_rule import law_tolerance, online_tolerance, peak_from_fit, step_se
from evomerge.theory.scaling_law import fit_scaling_law

K = 10
M = 4
TASKS, ROWS = 10, 64
FRACTION = 0.02
FAMILIES = ("peaked", "peaked", "turn", "turn", "rising", "at1", "flat")


def true_curve(rng: np.random.Generator, kind: str) -> tuple[float, np.ndarray]:
    """(base accuracy, true accuracy at k = 1..K)."""
    k = np.arange(1, K + 1, dtype=float)
    base = rng.uniform(0.35, 0.6)
    g = rng.uniform(0.01, 0.15)
    d = g * rng.uniform(0.3, 2.0)
    b = rng.uniform(0.3, 2.0)
    rise = 1 - k**-b
    if kind == "peaked":
        kstar = rng.uniform(1.0, 14.0)
        f = rise - b * kstar ** (-b - 1) * (k - 1)
    elif kind == "turn":
        p = int(rng.integers(1, K))
        f = rise - rng.uniform(0.1, 1.0) * (1 - 2**-b) * np.maximum(0.0, k - p) * 2
    elif kind == "rising":
        f = rise
    elif kind == "at1":
        f = -rng.uniform(0.1, 1.0) * (k - 1) / K
    else:
        f = np.zeros(K)
    return base, base + g + d * f


def evaluate(rng: np.random.Generator, base: float, acc: np.ndarray, sigma: float, rho: float) -> np.ndarray:
    """Per-example values ``(K + 1, T, n)``: row 0 the base model, row k the curve at k."""
    level = rng.uniform(-0.2, 0.2, TASKS)
    level -= level.mean()  # tasks differ; their mean is the curve
    true = np.concatenate([[base], acc])[:, None] + level[None, :]
    u = rng.standard_normal((TASKS, ROWS))
    e = rng.standard_normal((K + 1, TASKS, ROWS))
    return true[:, :, None] + sigma * (np.sqrt(rho) * u[None] + np.sqrt(1 - rho) * e)


def step_ses(x: np.ndarray) -> np.ndarray:
    """Paired SEs of the steps k -> k+1 for k + 1 <= M, from the per-example values of k <= M only."""
    ex = {f"t{t}": x[1:M + 1, t, :] for t in range(TASKS)}
    return paired_se(ex, np.ones((M, TASKS), bool), np.eye(M), [(i + 1, i) for i in range(M - 1)])


def run(n_curves: int, zs: list[float], seed: int):
    rng = np.random.default_rng(seed)
    hows = ("rms", "last")
    rows = []  # per curve: kind, true peak, measured peak, {(how, z): predicted k}, true curve, G
    for _ in range(n_curves):
        kind = str(rng.choice(FAMILIES))
        base, acc = true_curve(rng, kind)
        sigma, rho = rng.choice([0.07, 0.14, 0.28]), rng.choice([0.5, 0.75, 0.9])
        x = evaluate(rng, base, acc, sigma, rho)
        measured = x.mean(axis=(1, 2))  # the points as a run measures them (mean over tasks of task means)
        ks = np.arange(1, K + 1, dtype=float)
        loss = -measured[1:]
        tol0 = online_tolerance(FRACTION, [measured[1]], measured[0])
        fit = fit_scaling_law(ks[:M], loss[:M])
        ses = step_ses(x)
        pred = {}
        for how in hows:
            se = step_se(ses, how)
            for z in zs:
                tol = law_tolerance(tol0, se, z)
                pred[(how, z)] = peak_from_fit(fit, tol=tol, k_cap=K, k_min=1).predicted_k if tol > 0 else K
        rows.append((kind, int(np.argmax(acc)) + 1, int(np.argmax(measured[1:])) + 1, pred, acc, acc[0] - base))
    return rows


def report(rows, zs: list[float]) -> None:
    nonflat = [r for r in rows if r[0] != "flat"]
    rising = [r for r in rows if r[0] == "rising"]
    flat = [r for r in rows if r[0] == "flat"]
    print(f"curves: {len(rows)} ({len(nonflat)} non-flat, {len(rising)} rising, {len(flat)} flat)")
    print("SE | z | near true peak | minus z=0 (MC SE) | near measured peak | > 2 past true | regret / G | "
          "rising: >= 6 | flat: <= 2")
    for how in ("rms", "last"):
        base_hit = np.array([abs(r[3][(how, 0.0)] - r[1]) <= 1 for r in nonflat], float)
        for z in zs:
            hit = np.array([abs(r[3][(how, z)] - r[1]) <= 1 for r in nonflat], float)
            diff = hit - base_hit
            near_meas = np.mean([abs(r[3][(how, z)] - r[2]) <= 1 for r in nonflat])
            past = np.mean([r[3][(how, z)] - r[1] > 2 for r in nonflat])
            regret = np.mean([(r[4].max() - r[4][r[3][(how, z)] - 1]) / r[5] for r in nonflat])
            late = np.mean([r[3][(how, z)] >= 6 for r in rising]) if rising else float("nan")
            small = np.mean([r[3][(how, z)] <= 2 for r in flat]) if flat else float("nan")
            print(f"{how} | {z:g} | {hit.mean():.3f} | {diff.mean():+.3f} ({diff.std(ddof=1) / np.sqrt(len(diff)):.3f}) | "
                  f"{near_meas:.3f} | {past:.3f} | {regret:.3f} | {late:.2f} | {small:.2f}", flush=True)
    print("\nnear true peak by family (SE | z | " + " | ".join(sorted({r[0] for r in nonflat})) + ")")
    for how in ("rms", "last"):
        for z in zs:
            parts = []
            for fam in sorted({r[0] for r in nonflat}):
                fr = [r for r in nonflat if r[0] == fam]
                parts.append(f"{np.mean([abs(r[3][(how, z)] - r[1]) <= 1 for r in fr]):.2f} ({len(fr)})")
            print(f"{how} | {z:g} | " + " | ".join(parts))
    print("\nnear true peak by true-peak range (SE | z | 1-4 | 5-10)")
    for how in ("rms", "last"):
        for z in zs:
            lo = [abs(r[3][(how, z)] - r[1]) <= 1 for r in nonflat if r[1] <= M]
            hi = [abs(r[3][(how, z)] - r[1]) <= 1 for r in nonflat if r[1] > M]
            print(f"{how} | {z:g} | {np.mean(lo):.3f} ({len(lo)}) | {np.mean(hi):.3f} ({len(hi)})")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--curves", type=int, default=2000)
    ap.add_argument("--z", default="0,0.5,1,1.5,2,3")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    zs = [float(z) for z in args.z.split(",")]
    if 0.0 not in zs:
        zs = [0.0] + zs
    report(run(args.curves, zs, args.seed), zs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
