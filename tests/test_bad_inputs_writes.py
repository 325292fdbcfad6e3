"""The output writer under a kill and under a race, with real processes and real merges.

* a merge SIGKILLed while writing its weights leaves no output; the rerun succeeds, removes the
  killed run's temporary folder and leaves nothing else behind;
* two merges to one ``--out`` at once: exactly one wins, the other gets a one-line error.

The child processes patch ``safetensors.torch.save_file`` (test side only) to die, or to wait,
in the middle of writing.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from evomerge.cli import main
from evomerge.io import sha256_file

CHILD = textwrap.dedent("""
    import os, signal, sys, time, pathlib
    import safetensors.torch as st
    mode, flag = sys.argv[1], pathlib.Path(sys.argv[2])
    real = st.save_file

    def patched(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        if mode == "die":  # half a file on disk, then SIGKILL
            with open(filename, "r+b") as fh:
                fh.truncate(os.path.getsize(filename) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "wait":  # hold the output until the test says go
            flag.write_text("writing")
            t0 = time.time()
            while not flag.with_suffix(".go").exists() and time.time() - t0 < 300:
                time.sleep(0.05)

    st.save_file = patched
    from evomerge.cli import main
    sys.exit(main(sys.argv[3:]))
""")


def _merge_args(zoo, out: Path) -> list[str]:
    return ["merge", "-q", "-e", str(zoo.expert_dirs["brackets"]), "-e", str(zoo.expert_dirs["majority"]),
            "--space", "concat", "--out", str(out)]


def _child(mode: str, flag: Path, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, mode, str(flag), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_merge_killed_mid_write_leaves_no_output_and_the_rerun_cleans_up(small_zoo, tmp_path, capsys) -> None:
    out = tmp_path / "merged"
    proc = _child("die", tmp_path / "flag", _merge_args(small_zoo, out))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -9, err
    assert not out.exists()
    left = _hidden(tmp_path)
    assert any(n.startswith(".merged.tmp-") for n in left), left  # what the kill left
    partial = next(tmp_path.glob(".merged.tmp-*/adapter_model.safetensors"))
    assert partial.stat().st_size > 0

    capsys.readouterr()
    assert main(_merge_args(small_zoo, out)) == 0, capsys.readouterr().err
    assert _hidden(tmp_path) == []  # the killed run's temporary folder and the lock are gone
    ref = tmp_path / "ref" / "merged"
    assert main(_merge_args(small_zoo, ref)) == 0
    assert sha256_file(out / "adapter_model.safetensors") == sha256_file(ref / "adapter_model.safetensors")
    from peft import PeftConfig

    assert PeftConfig.from_pretrained(str(out)).peft_type.value == "LORA"


def test_two_merges_to_one_output_exactly_one_wins(small_zoo, tmp_path, capsys) -> None:
    out = tmp_path / "merged"
    flag = tmp_path / "a_is_writing"
    first = _child("wait", flag, _merge_args(small_zoo, out))
    t0 = time.time()
    while not flag.exists():
        assert first.poll() is None, first.communicate()[1]
        assert time.time() - t0 < 300
        time.sleep(0.05)
    # the first merge holds the output (mid-write); the second one runs to its end meanwhile
    second = subprocess.run([sys.executable, "-m", "evomerge", *_merge_args(small_zoo, out)], capture_output=True,
                            text=True, timeout=300)
    flag.with_suffix(".go").write_text("go")
    _, err_first = first.communicate(timeout=300)
    assert first.returncode == 0, err_first
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "another evomerge process is writing this output now" in lines[0]
    assert str(out) in lines[0]
    assert (out / "adapter_model.safetensors").is_file() and _hidden(tmp_path) == []
    # once the first has finished, a third is refused because the output exists
    capsys.readouterr()
    assert main(_merge_args(small_zoo, out)) == 2
    assert "output already exists" in capsys.readouterr().err


@pytest.mark.parametrize("what", ["tmp", "old"])
def test_stale_leftovers_are_cleaned_or_restored(tmp_path, what) -> None:
    """``.NAME.old-*`` holds the previous output when a replacement died between its two renames:
    it is put back; ``.NAME.tmp-*`` of a dead writer is removed."""
    from evomerge.io import atomic_dir

    out = tmp_path / "o"
    stale = tmp_path / (".o.tmp-999999-abc" if what == "tmp" else ".o.old-999999")
    stale.mkdir()
    (stale / "x").write_text("previous output")
    if what == "tmp":
        with atomic_dir(out) as tmp:
            (tmp / "y").write_text("new")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["o"] and (out / "y").read_text() == "new"
    else:  # the old output comes back, so a new write without overwrite is refused
        from evomerge.errors import OutputExistsError

        with pytest.raises(OutputExistsError):
            with atomic_dir(out) as tmp:
                pass
        assert (out / "x").read_text() == "previous output" and sorted(p.name for p in tmp_path.iterdir()) == ["o"]
