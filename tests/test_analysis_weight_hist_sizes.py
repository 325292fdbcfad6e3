"""The scale report's weight histograms draw plain and RHT from the same number of entries.

Plain and RHT populations with the same distribution but 1 cell against 3 (n = 4100 against
12300): the largest |value| a curve reaches (its outermost bin) must then be as likely to belong to
either curve. With 3n against n the larger sample reaches further three times in four (P(max of 3n
draws > max of n) = 3/4), which is what made the RHT tails look wider.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from evomerge.analysis import figures as afig
from evomerge.pipelines.scale import report_figures

N_CELL = 4100


def table(rng: np.random.Generator, method: str = "task_arithmetic", k: int = 10) -> pd.DataFrame:
    """One plain cell and three RHT seeds at k, plus a smaller k the figure must ignore; values
    from one heavy-tailed distribution (Student t, 3 degrees of freedom) for every cell."""
    parts = []
    for kk in (k - 1, k):
        for rht, seeds in ((False, [0]), (True, [0, 1, 2])):
            for s in seeds:
                parts.append(pd.DataFrame({"cell": f"k{kk:03d}-{method}-{'rht' if rht else 'plain'}-s{s}", "k": kk,
                                           "method": method, "rht": rht, "seed": s,
                                           "value": rng.standard_t(3, N_CELL).astype(np.float32)}))
    return pd.concat(parts, ignore_index=True)


def drawn(monkeypatch, tables) -> list[dict[str, np.ndarray]]:
    """What weight_histograms hands to the plot, per table (the plot itself skipped)."""
    got = []
    monkeypatch.setattr(report_figures, "plot_weight_histograms", lambda hist, path: (got.append(dict(hist)), path)[1])
    for t in tables:
        report_figures.weight_histograms(t, Path("/nonexistent"))
    return got


def test_equal_sizes_make_the_tails_exchangeable(monkeypatch):
    rng = np.random.default_rng(2024)
    reps = 400
    tables = [table(rng) for _ in range(reps)]
    got = drawn(monkeypatch, tables)
    plain_key, rht_key = "task_arithmetic k=10", "task_arithmetic k=10 + RHT"
    further = 0
    for t, hist in zip(tables, got):
        assert set(hist) == {plain_key, rht_key}
        plain, rht = hist[plain_key], hist[rht_key]
        assert plain.size == rht.size == N_CELL
        at_k = t[t["k"] == 10]
        np.testing.assert_array_equal(plain, at_k[~at_k["rht"]]["value"].to_numpy())  # the smaller one untouched
        pool = at_k[at_k["rht"]]["value"].to_numpy()
        assert np.isin(rht, pool).all()  # a subsample of the RHT cells
        further += np.abs(rht).max() > np.abs(plain).max()
    share = further / reps  # 1/2 for exchangeable samples (sd 0.025 over 400 tables); 3/4 before
    assert abs(share - 0.5) < 0.1, share


def test_subsample_is_without_replacement_and_reproducible(monkeypatch):
    rng = np.random.default_rng(7)
    t = table(rng)
    t.loc[t["rht"], "value"] = np.arange(int(t["rht"].sum()), dtype=np.float32)  # distinct, identifiable entries
    a, b = drawn(monkeypatch, [t, t])
    rht = a["task_arithmetic k=10 + RHT"]
    assert np.unique(rht).size == N_CELL  # no entry twice
    np.testing.assert_array_equal(rht, b["task_arithmetic k=10 + RHT"])
    # drawn from all three seeds' cells, not one: each of the three cells gives about a third
    at_k = t[(t["k"] == 10) & t["rht"]]
    per_seed = [np.isin(rht, g["value"].to_numpy()).sum() for _, g in at_k.groupby("seed")]
    assert all(abs(c - N_CELL / 3) < 5 * np.sqrt(N_CELL * 2 / 9) for c in per_seed)


def test_legend_says_the_equal_n(tmp_path, monkeypatch):
    figs = []
    real = afig._save
    monkeypatch.setattr(afig, "_save", lambda fig, path: (figs.append(fig), real(fig, path))[1])
    out = report_figures.weight_histograms(table(np.random.default_rng(3)), tmp_path)
    assert out == {"weight_hist_task_arithmetic": "figures/weight_hist_task_arithmetic.png"}
    labels = [t.get_text() for t in figs[0].axes[0].get_legend().get_texts()]
    assert labels == [f"task_arithmetic k=10 (n = {N_CELL})", f"task_arithmetic k=10 + RHT (n = {N_CELL})"]
