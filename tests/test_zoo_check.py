"""`evomerge zoo check`: merges of unrelated experts keep their gains; the k-curve bends."""

from __future__ import annotations

import pytest
import torch

from evomerge.cli import main
from evomerge.zoo.check import CheckRow, n_unrelated, summarize, unrelated_first

torch.set_num_threads(1)


def _row(k, merged, all_merged, method="task_arithmetic"):
    return CheckRow(k, tuple("abcdef"[:k]), method, {}, 0.5, 0.7, merged, all_merged)


def test_retention_and_bend_hand_worked():
    rows = [_row(1, 0.7, 0.55), _row(2, 0.62, 0.60), _row(2, 0.58, 0.58, "ties"), _row(3, 0.55, 0.59)]
    s = summarize(rows, n_unrelated=3)
    assert rows[1].retained == pytest.approx(0.6)  # (0.62 - 0.5) / (0.7 - 0.5)
    assert s["best"][2] is rows[1]
    assert s["retention_2_4_ok"] is False  # k=3 keeps only 25%
    assert s["bends"] is True and s["peak_k"] == 2
    rising = [_row(1, 0.7, 0.50), _row(2, 0.7, 0.55), _row(3, 0.7, 0.60)]
    s = summarize(rising, n_unrelated=3)
    assert s["retention_2_4_ok"] is True and s["bends"] is False


def test_unrelated_first_order(small_zoo):
    order = unrelated_first(small_zoo)
    assert sorted(order) == sorted(small_zoo.tasks)
    k = n_unrelated(small_zoo, order)
    assert k == len(small_zoo.tasks) - 1  # only rev_digits~sort_digits are related
    pairs = {frozenset(p) for p in small_zoo.related_pairs}
    assert all(frozenset((a, b)) not in pairs for i, a in enumerate(order[:k]) for b in order[:i])


def test_zoo_check_on_small_zoo(small_zoo, capsys):
    assert main(["zoo", "check", str(small_zoo.root), "--max-samples", "60", "--k-max", "3"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line[:2].strip().isdigit()]
    assert {int(r[0]) for r in rows} == {1, 2, 3}
    kept = {}
    for r in rows:
        k, value = int(r[0]), float(r[-3] if r[-1] == "*" else r[-2])
        kept[k] = max(kept.get(k, -9.0), value)
    assert kept[1] == pytest.approx(1.0)  # one expert "merged" alone is that expert
    assert kept[2] >= 0.5, out  # two unrelated specialists keep at least half their gain
    assert "target 1" in out and "target 2" in out
