"""A check that needs the pool's size (``genome.population`` against the pairs of ``init_pairs:
coverage``) runs before any work and names where its keys were set: the config file, ``--set``,
as a refused value of the config itself does (real CLI runs on the small zoo; Ray never starts)."""

from __future__ import annotations

import yaml
from _cli_helpers import one_error


def test_population_above_the_pairs_names_the_file(tmp_path, small_zoo, capsys) -> None:
    path = tmp_path / "bad2.yaml"
    path.write_text(yaml.safe_dump({"genome": {"population": 40, "init_pairs": "coverage"}}))
    out = tmp_path / "run"
    line = one_error(["evolve", "--algo", "genome", "--config", path, "--out", out], capsys)
    pairs = len(small_zoo.tasks) * (len(small_zoo.tasks) - 1) // 2
    # was: "error: `genome.population` (40) is larger ..." (no file named)
    assert line == (f"error: {path}: `genome.population` (40) is larger than the {pairs} pairs of "
                    f"{len(small_zoo.tasks)} experts, and `genome.init_pairs: coverage` never reuses a pair; "
                    "lower it or use init_pairs: coverage_reuse"), line
    assert not out.exists()
    line = one_error(["evolve", "--algo", "genome", "--config", path, "--out", out,
                      "--set", "genome.population=30"], capsys)
    assert line.startswith(f"error: {path} + --set: `genome.population` (30)"), line
    line = one_error(["evolve", "--algo", "genome", "--out", out, "--set", "genome.population=30",
                      "--set", "genome.init_pairs=coverage"], capsys)
    assert line.startswith("error: --set: `genome.population` (30)"), line
    assert not out.exists()
