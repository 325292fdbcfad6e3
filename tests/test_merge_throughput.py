"""``benchmarks/merge_throughput.py``: the one-process mode the GPU check uses (run here on CPU
tensors) and the operation subset; the results are compared with peft computed here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def mt():
    sys.path.insert(0, str(BENCH))
    import merge_throughput

    return merge_throughput


def test_target_ops_in_one_process(mt, capsys):
    pytest.importorskip("peft")
    mt.main(["--device", "cpu", "--size", "48", "--experts", "3", "--rounds", "2", "--repeats", "1",
             "--threads", "1", "--ops", "target", "--no-isolate", "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(out["timings"]) == ["memcopy", "evomerge_ties", "peft_ties", "evomerge_dare_ties", "peft_dare_ties"]
    for r in out["timings"].values():
        assert r["seconds"] > 0 and r["input_bytes"] == 3 * 48 * 48 * 4
        assert r["peak_extra_bytes"] is None  # one CPU process: ru_maxrss cannot be reset per operation
    assert set(out["comparison"]) == {"ties", "dare_ties"}

    # the comparison against peft, recomputed here on the benchmark's own tensors
    from peft.utils import merge_utils

    from evomerge.merging import get_merge_method

    g = torch.Generator().manual_seed(0)
    d = torch.randn((3, 48, 48), generator=g)
    w = torch.linspace(0.5, 1.5, 3)
    ours = get_merge_method("ties")(d, w, density=0.2)
    ref = merge_utils.ties(list(d), w, 0.2)
    assert out["comparison"]["ties"]["identical"] == bool(torch.equal(ours, ref)) is True
    assert out["comparison"]["ties"]["nonzero_fraction"] == pytest.approx(float((ref != 0).float().mean()))


def test_ops_subset_keeps_the_copy_and_refuses_unknown_names(mt, capsys):
    import argparse

    p = argparse.ArgumentParser()
    assert mt._parse_ops(p, "evomerge_ties") == ["memcopy", "evomerge_ties"]
    assert mt._parse_ops(p, "all") == list(mt.OPS)
    with pytest.raises(SystemExit):
        mt._parse_ops(p, "evomerge_ties,bogus")
    assert "bogus" in capsys.readouterr().err
