"""``evomerge analyze``'s printout reads truthfully on a pool smaller than its n_max (two of the small
zoo's adapters): the n_max line does not read as "merge 14 of 2", and one direction is singular."""

from __future__ import annotations

import json

from _cli_helpers import run_cli


def test_n_max_above_the_pool_size_and_one_direction(small_zoo, tmp_path, capsys) -> None:
    out = tmp_path / "a"
    code, printed, err = run_cli(["analyze", "-q", "-e", small_zoo.expert_dirs["brackets"], "-e",
                                  small_zoo.expert_dirs["majority"], "--delta", "1e-6", "--out", out], capsys)
    assert code == 0, err
    s = json.loads((out / "summary.json").read_text())
    assert s["n_experts"] == 2 and s["n_max"] > 2 and s["stop_k"] == 2  # the case: n_max beyond the pool
    lines = {line.split(":", 1)[0]: line for line in printed.splitlines()}
    # before: "n_max: 14   (merge 2 of 2)" and "span at most 1 directions"
    assert lines["n_max"] == (f"n_max:              {s['n_max']}   (growing a merge of experts like these from 1 to "
                              f"{s['n_max']}, each one added lowers the merged variance by >= Delta; this pool has 2: "
                              "merge all)")
    assert lines["PCA 95% components"] == ("PCA 95% components: 1   (the ceiling: 2 centred experts span at most 1 "
                                           "direction; no low-rank structure shown)")


def test_n_max_below_the_pool_size(small_zoo, tmp_path, capsys) -> None:
    experts = [a for t in ("brackets", "majority", "rev_digits", "sort_digits") for a in ("-e", small_zoo.expert_dirs[t])]
    code, printed, err = run_cli(["analyze", "-q", *experts, "--delta", "1e-3", "--out", tmp_path / "a"], capsys)
    assert code == 0, err
    s = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert s["n_max"] == s["stop_k"] < 4
    assert (f"n_max:              {s['n_max']}   (merge {s['stop_k']} of the 4: the next would lower the merged "
            "variance by less than Delta)") in printed.splitlines()


def test_identical_experts_lower_nothing(tmp_path) -> None:
    """Three identical task vectors: rho = 1, every drop is 0 and so is the adaptive Delta; the
    note does not say the next expert would lower the variance "by less than Delta" (0 is not
    less than 0). (Three copies of an adapter read from disk give rho = 1 - 3e-16, not 1.)"""
    import torch

    from evomerge.analysis import analyze_pool
    from evomerge.cli.analyze import _stop_note

    v = torch.randn(500, generator=torch.Generator().manual_seed(0))
    s = analyze_pool(torch.stack([v, v, v]), tmp_path / "a", progress=False).summary
    assert (s["rho"], s["delta"], s["n_max"], s["stop_k"]) == (1.0, 0.0, 1, 1)
    assert _stop_note(s) == "merge 1 of the 3: no expert after the first lowers the merged variance (sigma^2 (1 - rho) = 0)"
