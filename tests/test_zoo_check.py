"""`evomerge zoo check`: the targets of the default world, hand-worked and on real zoos (it can fail)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from evomerge.cli import main
from evomerge.zoo import Zoo
from evomerge.zoo.check import Curves, evaluate_targets, gain_order, saturation

torch.set_num_threads(1)


def _zoo(tmp_path, related=(("a", "b"),), corr=None):
    names = ["a", "b", "c", "d"]
    corr = corr or [[1, 0.5, 0, 0], [0.5, 1, 0, 0], [0, 0, 1, 0.1], [0, 0, 0.1, 1]]
    manifest = {"tasks": [{"name": n, "domain": n} for n in names], "related_pairs": [list(p) for p in related],
                "correlations": {"tasks": names, "lora": corr}, "build_seconds": 2000, "build_cpu_seconds": 900}
    return Zoo(root=tmp_path, manifest=manifest)


def _curves(gains_by_k, lam1_by_k, base=0.4):
    """Curves whose tuned gain is ``gains_by_k`` (lambda 0.35) and lambda=1 gain ``lam1_by_k``."""
    scores = {k: {1.0: base + lam1_by_k[k], 0.6: base + min(g, lam1_by_k[k]), 0.35: base + g, 0.2: base}
              for k, g in gains_by_k.items()}
    return Curves(["a", "b", "c", "d"], base, scores)


def test_saturation_thirds_hand_worked():
    # n = 6, thirds of 2: first third = g(2) - g(0), last third = g(6) - g(4)
    first, last = saturation({1: 0.05, 2: 0.09, 3: 0.11, 4: 0.12, 5: 0.125, 6: 0.13})
    assert first == pytest.approx(0.09) and last == pytest.approx(0.01)
    # a straight line does not saturate: equal thirds
    first, last = saturation({k: 0.02 * k for k in range(1, 7)})
    assert last == pytest.approx(first)


def test_targets_pass_on_a_good_world_and_fail_one_by_one(tmp_path):
    zoo = _zoo(tmp_path)
    base = {"a": 0.4, "b": 0.5, "c": 0.3, "d": 0.6}
    own = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.9}
    good = _curves({1: 0.08, 2: 0.11, 3: 0.13, 4: 0.13}, {1: 0.08, 2: 0.09, 3: 0.05, 4: -0.02})
    t = {x.name: x for x in evaluate_targets(zoo, base, own, good, 0.05)}
    assert all(x.passed for x in t.values()), [x for x in t.values() if not x.passed]
    assert t["base mean over tasks"].value == pytest.approx(0.45)
    assert t["base on its best task"].value == pytest.approx(0.6) and t["base on its best task"].note == "d"
    assert t["smallest own-task gain of an expert"].value == pytest.approx(0.3)
    assert t["mean own-task gain"].value == pytest.approx(0.375)
    assert t["tuned task arithmetic, best all-task gain"].note == "at k=3"  # ties: the smaller k
    assert t["lambda=1: fall from its best k to k=N"].value == pytest.approx(0.11)
    assert t["task-vector cosine, related minus unrelated pairs"].value == pytest.approx(0.5 - 0.1 / 5)
    assert gain_order(base, own) == ["a", "c", "b", "d"]

    def failing(**kw):
        args = dict(base=base, own=own, curves=good, ab_error=0.05)
        args.update(kw)
        return [x.name for x in evaluate_targets(args.pop("zoo", zoo), **args) if not x.passed]

    assert failing(base={**base, "a": 0.2, "d": 0.85}, own={**own, "d": 1.0}) == ["base on its best task"]
    assert failing(own={**own, "b": 0.6, "c": 0.9}) == ["smallest own-task gain of an expert"]
    assert failing(own={**own, "a": 0.8, "c": 0.6}) == ["mean own-task gain"]
    assert failing(ab_error=0.2) == ['"ab" average vs delta average, relative error']
    early = _curves({1: 0.12, 2: 0.11, 3: 0.1, 4: 0.09}, {1: 0.12, 2: 0.09, 3: 0.05, 4: -0.02})
    assert failing(curves=early) == ["k of that best gain"]
    flat = _curves({1: 0.03, 2: 0.06, 3: 0.09, 4: 0.12}, {1: 0.03, 2: 0.06, 3: 0.08, 4: 0.08})
    assert failing(curves=flat) == ["saturation: last-third gain / first-third gain", "lambda=1: fall from its best k to k=N"]
    assert failing(zoo=_zoo(tmp_path, related=(("c", "d"),))) == ["task-vector cosine, related minus unrelated pairs"]


def _check_lines(out: str) -> dict[str, str]:
    """Target lines of `zoo check`, keyed by the target's name."""
    return {line[2:52].strip(): line for line in out.splitlines()
            if line.startswith("  ") and ("PASS" in line or "FAIL" in line)}


def test_zoo_check_fails_on_the_small_zoo(small_zoo, capsys):
    """The small (test) zoo is not the designed world: its base is strong, its gains small."""
    code = main(["zoo", "check", str(small_zoo.root), "--max-samples", "60"])
    out = capsys.readouterr().out
    assert code == 1, out
    lines = _check_lines(out)
    assert "FAIL" in lines["mean own-task gain"] and "FAIL" in lines["base on its best task"], out
    assert "targets pass; FAIL:" in out
    # the table: one row per k with four lambdas and the tuned gain, which is their maximum
    rows = [line.split() for line in out.splitlines() if line[:2].strip().isdigit()]
    assert [int(r[0]) for r in rows] == list(range(1, len(small_zoo.tasks) + 1))
    for r in rows:
        assert float(r[5]) == pytest.approx(max(float(x) for x in r[1:5]), abs=1e-3)


def test_zoo_check_refuses_a_doctored_zoo(small_zoo, tmp_path, capsys):
    root = tmp_path / "z"
    shutil.copytree(small_zoo.root, root)
    m = json.loads((root / "zoo.json").read_text())
    m["files"]["tasks/brackets/validation.parquet"] = "0" * 64
    (root / "zoo.json").write_text(json.dumps(m))
    assert main(["zoo", "check", str(root), "--max-samples", "20"]) == 2
    err = capsys.readouterr().err
    assert "tasks/brackets/validation.parquet" in err and "zoo build" in err
