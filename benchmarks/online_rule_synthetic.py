"""Choose the online rule's tolerance on synthetic curves with known peaks (never on a real run).

    python benchmarks/online_rule_synthetic.py [--fractions 0.01,0.02,0.05,0.1] [--curves 400]

Curves (10 k, 3 seeds, Gaussian noise of 0.5-3% of the first gain): a loss
``A / k^b + c (k - 1)`` that falls then rises (``peaked``), one without cost that keeps falling
(``rising``: the measured peak is wherever the noise puts the flat tail), one whose cost beats
the gain from the second expert on (``at1``), and a constant (``flat``). The first point's gain
over the base model ``G`` sets the tolerance ``tol = fraction x G`` as in the scale run.

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


def measured_peak(k: np.ndarray, loss: np.ndarray) -> int:
    grid = np.unique(k)
    return int(grid[np.argmin([loss[k == g].mean() for g in grid])])


def score(fraction: float, n_curves: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, list]] = {}
    for kind, k, loss, tol in curves(np.random.default_rng(0), n_curves, fraction):
        peak = measured_peak(k, loss)
        fired = {"online (2-point start)": online_stop(k, loss, tol=tol, min_points=2).fired_k,
                 "online (3 points, before)": online_stop(k, loss, tol=tol, min_points=3).fired_k,
                 "law k<=4": law_peak(k, loss, m=4, tol=tol, k_cap=10).predicted_k}
        for rule, fk in fired.items():
            rec = out.setdefault(rule, {"near": [], "past2": [], "flat_first": []})
            if kind == "flat":
                rec["flat_first"].append(fk <= (2 if rule.startswith("online (2") else 3))
            else:
                rec["near"].append(abs(fk - peak) <= 1)
                rec["past2"].append(fk - peak > 2)
    return {rule: {key: float(np.mean(v)) for key, v in rec.items()} for rule, rec in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fractions", default="0.01,0.02,0.05,0.1")
    ap.add_argument("--curves", type=int, default=400)
    args = ap.parse_args()
    print("fraction | rule | within +-1 of the measured peak (non-flat) | > 2 past | flat: stopped at once")
    for fraction in (float(f) for f in args.fractions.split(",")):
        for rule, r in score(fraction, args.curves).items():
            print(f"{fraction:g} | {rule} | {r['near']:.2f} | {r['past2']:.3f} | {r['flat_first']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
