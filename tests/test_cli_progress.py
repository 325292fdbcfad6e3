"""``--no-progress`` (and ``merge -q``) silences the libraries' bars too (transformers' "Loading
weights"), in the process that asks and in the processes it starts afterwards."""

from __future__ import annotations

import subprocess
import sys

import pytest

LOAD = """
import sys
from evomerge.zoo import ensure_zoo
if sys.argv[1] == "quiet":
    from evomerge.cli._common import quiet_progress_bars
    quiet_progress_bars()
from transformers import AutoModelForCausalLM
AutoModelForCausalLM.from_pretrained(ensure_zoo("small").base_dir)
if sys.argv[1] == "quiet":  # a child started afterwards (a Ray worker, a side process) inherits it
    import subprocess
    subprocess.run([sys.executable, "-c", "from transformers import AutoModelForCausalLM as M; "
                    f"M.from_pretrained({str(ensure_zoo('small').base_dir)!r})"], check=True)
"""


def _stderr(mode: str) -> str:
    env = {k: v for k, v in __import__("os").environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    r = subprocess.run([sys.executable, "-c", LOAD, mode], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stderr


@pytest.mark.parametrize("mode", ["loud", "quiet"])
def test_quiet_progress_bars_silences_transformers_loading_bar(mode):
    err = _stderr(mode)
    if mode == "loud":  # the bar this is about does print by default (else the quiet case proves nothing)
        assert "Loading weights" in err
    else:
        assert "Loading weights" not in err


@pytest.mark.parametrize("quiet", [False, True])
def test_merge_quiet_silences_the_statistics_model_loading_bar(quiet, small_zoo, tmp_path):
    """``merge -q``: fisher loads the base (transformers' "Loading weights" bar) for its statistics."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    args = [sys.executable, "-m", "evomerge", "merge", "-e", str(small_zoo.expert_dirs["brackets"]),
            "-e", str(small_zoo.expert_dirs["majority"]), "--base", str(small_zoo.base_dir), "--method", "fisher",
            "--data", str(small_zoo.task_files("brackets")["validation"]), "--set", "merge.data_samples=4",
            "--rank", "4", "--out", str(tmp_path / "m"), *(["-q"] if quiet else [])]
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert ("Loading weights" in r.stderr) is not quiet, r.stderr[-2000:]
    if quiet:
        assert r.stderr == "", r.stderr[-2000:]
