"""Pure table transforms for scale results: per-task scores -> fitness per target -> peaks.

Two targets: ``union`` (mean over the tasks of the k merged experts, the multi-task target)
and ``all`` (mean over every task of the pool, comparable across k). Base rows (k=0) have
no ``union`` value. Choices (the peak) use validation; test is only reported beside it.
"""

from __future__ import annotations

import pandas as pd

GROUP = ["cell", "kind", "k", "method", "rht", "seed", "experts", "split"]


def fitness_table(scores: pd.DataFrame) -> pd.DataFrame:
    """One row per (cell, seed, split, target) with the unweighted mean per-task score (and
    the mean per-task cross-entropy)."""
    cols = GROUP + ["target", "fitness", "n_tasks", "cross_entropy"]
    if scores.empty:
        return pd.DataFrame(columns=cols)
    if "cross_entropy" not in scores:
        scores = scores.assign(cross_entropy=float("nan"))
    parts = []
    for target, frame in (("all", scores), ("union", scores[scores["in_subset"]])):
        g = frame.groupby(GROUP, dropna=False).agg(
            fitness=("score", "mean"), n_tasks=("score", "count"), cross_entropy=("cross_entropy", "mean")).reset_index()
        g["target"] = target
        parts.append(g)
    out = pd.concat(parts, ignore_index=True)[cols]
    return out.sort_values(["target", "split", "method", "rht", "k", "seed"], ignore_index=True)


def curve(fitness: pd.DataFrame, *, target: str, split: str) -> pd.DataFrame:
    """Mean, std and count over seeds per (method, rht, k) for one target and split (the
    correlated-pair cells are not on any curve)."""
    f = fitness[(fitness["target"] == target) & (fitness["split"] == split) & (fitness["kind"] != "pair")]
    g = f.groupby(["method", "rht", "k"])["fitness"].agg(["mean", "std", "count"]).reset_index()
    g["std"] = g["std"].fillna(0.0)
    return g


def method_label(method: str, rht: bool) -> str:
    return f"{method}+rht" if rht else method


def peaks(fitness: pd.DataFrame, *, target: str = "all") -> pd.DataFrame:
    """Per (method, rht): the k with the best mean validation fitness (ties: smallest k), with
    the validation mean/std there and the test mean at the same k."""
    val = curve(fitness, target=target, split="validation")
    test = curve(fitness, target=target, split="test").set_index(["method", "rht", "k"])
    rows = []
    for (method, rht), g in val[val["k"] >= 1].groupby(["method", "rht"]):
        if method in ("base", "expert"):
            continue
        g = g.sort_values("k")
        best = g.loc[g["mean"].idxmax()]  # idxmax keeps the first (smallest k) maximum
        k = int(best["k"])
        t = test["mean"].get((method, rht, k), float("nan"))
        rows.append(
            {
                "method": method,
                "rht": bool(rht),
                "label": method_label(method, bool(rht)),
                "peak_k": k,
                "val_mean": float(best["mean"]),
                "val_std": float(best["std"]),
                "test_mean": float(t),
                "k_max_run": int(g["k"].max()),
            }
        )
    return pd.DataFrame(rows, columns=["method", "rht", "label", "peak_k", "val_mean", "val_std", "test_mean", "k_max_run"])
