"""Expert names are printed whole in ``evaluate``'s table and the pool summary of ``merge``:
they were cut to 16 and 20 characters, so ``my_long_expert_name_v1`` and ``..._v2`` printed as
two identical rows."""

from __future__ import annotations

import shutil

from _cli_helpers import run_cli

NAMES = ("my_long_expert_name_v1", "my_long_expert_name_v2")


def _experts(small_zoo, tmp_path):
    for name, src in zip(NAMES, ("brackets", "majority")):
        shutil.copytree(small_zoo.expert_dirs[src], tmp_path / name)
    return [a for n in NAMES for a in ("-e", tmp_path / n)]


def test_evaluate_prints_whole_names(small_zoo, tmp_path, capsys):
    code, out, err = run_cli(["evaluate", "--small", *_experts(small_zoo, tmp_path), "--tasks", "brackets",
                              "--max-samples", "2"], capsys)
    assert code == 0, err
    rows = [ln.split()[0] for ln in out.splitlines() if ln.startswith("my_long")]
    assert rows == list(NAMES)


def test_the_pool_summary_prints_whole_names(small_zoo, tmp_path, capsys):
    code, out, err = run_cli(["merge", *_experts(small_zoo, tmp_path), "--space", "concat", "--out", tmp_path / "m"],
                             capsys)
    assert code == 0, err
    rows = [ln.split()[0] for ln in out.splitlines() if ln.strip().startswith("my_long")]
    assert rows == list(NAMES)
