"""Choose the online rule's tolerance on synthetic curves with known peaks (never on a real run).

    python benchmarks/online_rule_synthetic.py [--fractions 0.01,0.02,0.05,0.1] [--curves 400] [--turning 200]
    python benchmarks/online_rule_synthetic.py --law-study --fractions 0.02   # the law on k <= 4 by peak range

Curves (10 k, 3 seeds, Gaussian noise of 0.5-3% of the first gain): a loss
``A / k^b + c (k - 1)`` that falls then rises (``peaked``), one without cost that keeps falling
(``rising``: the measured peak is wherever the noise puts the flat tail), one whose cost beats
the gain from the second expert on (``at1``), and a constant (``flat``). The first point's gain
over the base model ``G`` sets the tolerance ``tol = fraction x G`` as in the scale run. A second
family (``--turning``, its own random stream) turns sharply after a peak anywhere in 1..9.

Per fraction, for the online rule with the two-point start (``min_points=2``) and without it
(``min_points=3``, the rule before), and for the law fitted on k <= 4: the share of curves where
the fired / predicted k is within +-1 of the measured peak (seed-mean argmin), the share stopped
more than 2 past it, and, for flat curves, the share stopped at the first k the rule may look
at (a flat curve has no peak to be near). Writes nothing; prints one line per (fraction, rule).
"""

from __future__ import annotations

import argparse

import numpy as np

from evomerge.theory.online_rule import law_peak, online_stop

KINDS = ("peaked", "peaked", "rising", "at1", "flat")


def curves(rng: np.random.Generator, n_curves: int, fraction: float, n: int = 10, seeds: int = 3):
    """Yield ``(kind, k, loss, tol)``; the same curves for every fraction (same rng draws)."""
    k = np.repeat(np.arange(1, n + 1), seeds).astype(float)
    for _ in range(n_curves):
        amp, b = rng.uniform(0.05, 0.5), rng.uniform(0.3, 2.0)
        kind = rng.choice(KINDS)
        c = {"peaked": rng.uniform(0.002, 0.05) * amp, "rising": 0.0, "at1": amp * rng.uniform(0.6, 2.0), "flat": 0.0}[kind]
        gain = amp * (1 - 2**-b) * rng.uniform(0.5, 3.0)
        if kind == "flat":
            gain = rng.uniform(0.05, 0.3)
        sd = gain * rng.choice([0.005, 0.015, 0.03])
        clean = (0.0 if kind == "flat" else amp / k**b) + c * (k - 1)
        yield kind, k, clean + rng.normal(0, sd, k.size), fraction * gain


def turning(rng: np.random.Generator, n_curves: int, fraction: float, n: int = 10, seeds: int = 3):
    """Curves that turn sharply: the law ``A / k^b`` up to a turning point p (uniform in 1..n-1),
    then a loss that rises by ``s`` per extra expert (``s`` = 0.1-1 x the first gain: interference
    that wins once the pool outgrows what the merge can hold). The peak is at p; a monotone law
    fitted to the points so far keeps predicting a gain there. Same noise as :func:`curves`."""
    k = np.repeat(np.arange(1, n + 1), seeds).astype(float)
    for _ in range(n_curves):
        amp, b = rng.uniform(0.05, 0.5), rng.uniform(0.3, 2.0)
        p = int(rng.integers(1, n))
        gain = amp * (1 - 2**-b) * rng.uniform(0.5, 3.0)
        slope = gain * rng.uniform(0.1, 1.0)
        sd = gain * rng.choice([0.005, 0.015, 0.03])
        clean = amp / k**b + slope * np.maximum(0.0, k - p)
        yield "turn", k, clean + rng.normal(0, sd, k.size), fraction * gain


def measured_peak(k: np.ndarray, loss: np.ndarray) -> int:
    grid = np.unique(k)
    return int(grid[np.argmin([loss[k == g].mean() for g in grid])])


def score(fraction: float, n_curves: int, family: str = "curves") -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, list]] = {}
    make = curves if family == "curves" else turning
    seed = 0 if family == "curves" else 1  # the first family's curves stay those of earlier runs
    for kind, k, loss, tol in make(np.random.default_rng(seed), n_curves, fraction):
        peak = measured_peak(k, loss)
        fired = {"online (2-point start)": online_stop(k, loss, tol=tol, min_points=2, turn=0).fired_k,
                 "online (3 points, before)": online_stop(k, loss, tol=tol, min_points=3, turn=0).fired_k,
                 "online + turned after 1 rise": online_stop(k, loss, tol=tol, turn=1).fired_k,
                 "online + turned after 2 rises": online_stop(k, loss, tol=tol, turn=2).fired_k,
                 "online + turned after 3 rises": online_stop(k, loss, tol=tol, turn=3).fired_k,
                 "law k<=4 (b fitted, 0.05-4)": law_peak(k, loss, m=4, tol=tol, k_cap=10, b_fixed=None).predicted_k,
                 "law k<=4 (b in 0.5-2)": law_peak(k, loss, m=4, tol=tol, k_cap=10, b_fixed=None,
                                                  b_bounds=(0.5, 2.0)).predicted_k,
                 "law k<=4 (b = 1)": law_peak(k, loss, m=4, tol=tol, k_cap=10, b_fixed=1.0).predicted_k}
        for rule, fk in fired.items():
            rec = out.setdefault(rule, {"near": [], "past2": [], "flat_first": []})
            if kind == "flat":
                rec["flat_first"].append(fk <= (2 if rule.startswith("online (2") or rule.startswith("online +") else 3))
            else:
                rec["near"].append(abs(fk - peak) <= 1)
                rec["past2"].append(fk - peak > 2)
    return {rule: {key: float(np.mean(v)) if v else float("nan") for key, v in rec.items()} for rule, rec in out.items()}


def relative_knee(k: np.ndarray, loss: np.ndarray, m: int = 4, fraction: float = 0.1, k_cap: int = 10) -> int:
    """The law fitted on k <= m; the first k whose predicted gain of one more expert is below
    ``fraction`` x its predicted gain of the second expert (Theorem 1's relative Delta, 0.1,
    applied to the fitted loss instead of the merged variance). A fit that does not fall: the
    smallest k."""
    from evomerge.theory.scaling_law import fit_scaling_law

    use = k <= m
    fit = fit_scaling_law(k[use], loss[use])
    first = fit.predict(1.0) - fit.predict(2.0)
    if not first > 0:
        return int(k.min())
    return law_peak(k, loss, m=m, tol=fraction * first, k_cap=k_cap).predicted_k


def law_study(fraction: float, n_curves: int, n_turning: int) -> None:
    """The law on k <= 4, split by where the measured peak lies (1-4: inside the fitted range;
    5-10: beyond it). Estimators: the saturation reading (the run's), the relative knee, and the
    constant guesses 4 and 5..7 (what any estimator could do if the 4 points said nothing about a
    later peak). In the turning family a curve that turns at p >= 5 has the same k <= 4 points
    whatever p is, so no estimator can beat the best constant guess on those curves."""
    print("family | peak range | n | saturation (run's rule) | relative knee 0.1 | guess 4 | guess 5 | guess 6 | guess 7")
    for family, n, make, seed in (("curves", n_curves, curves, 0), ("turning", n_turning, turning, 1)):
        rows: dict[str, list[list[bool]]] = {"1-4": [], "5-10": []}
        for kind, k, loss, tol in make(np.random.default_rng(seed), n, fraction):
            if kind == "flat":
                continue
            peak = measured_peak(k, loss)
            guesses = [law_peak(k, loss, m=4, tol=tol, k_cap=10).predicted_k, relative_knee(k, loss), 4, 5, 6, 7]
            rows["1-4" if peak <= 4 else "5-10"].append([abs(g - peak) <= 1 for g in guesses])
        for rng_name, hits in rows.items():
            share = np.mean(hits, axis=0) if hits else [float("nan")] * 6
            print(f"{family} | {rng_name} | {len(hits)} | " + " | ".join(f"{v:.2f}" for v in share), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--law-study", action="store_true", help="only the law on k <= 4 by peak range (fraction: the first)")
    ap.add_argument("--fractions", default="0.01,0.02,0.05,0.1")
    ap.add_argument("--curves", type=int, default=400)
    ap.add_argument("--turning", type=int, default=200, help="curves of the sharp-turn family (0: none)")
    args = ap.parse_args()
    if args.law_study:
        law_study(float(args.fractions.split(",")[0]), args.curves, args.turning)
        return 0
    print("family | fraction | rule | within +-1 of the measured peak (non-flat) | > 2 past | flat: stopped at once")
    for fraction in (float(f) for f in args.fractions.split(",")):
        for family, n in (("curves", args.curves), ("turning", args.turning)):
            if n <= 0:
                continue
            for rule, r in score(fraction, n, family).items():
                print(f"{family} | {fraction:g} | {rule} | {r['near']:.2f} | {r['past2']:.3f} | {r['flat_first']:.2f}",
                      flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
