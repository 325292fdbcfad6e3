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
    assert lines["n_max"] == (f"n_max:              {s['n_max']}   (up to {s['n_max']} experts like these each lower "
                              "the merged variance by >= Delta; this pool has 2: merge all)")
    assert lines["PCA 95% components"] == ("PCA 95% components: 1   (the ceiling: 2 centred experts span at most 1 "
                                           "direction; no low-rank structure shown)")


def test_n_max_below_the_pool_size(small_zoo, tmp_path, capsys) -> None:
    experts = [a for t in ("brackets", "majority", "rev_digits", "sort_digits") for a in ("-e", small_zoo.expert_dirs[t])]
    code, printed, err = run_cli(["analyze", "-q", *experts, "--delta", "1e-3", "--out", tmp_path / "a"], capsys)
    assert code == 0, err
    s = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert s["n_max"] == s["stop_k"] < 4
    assert (f"n_max:              {s['n_max']}   (merge {s['stop_k']} of the 4: the next would lower the merged "
            "variance by < Delta)") in printed.splitlines()
