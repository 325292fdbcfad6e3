"""``evomerge zoo``: refusals before any work (the shipped zoos and the cache as ``--out``,
contradicting flags, a negative seed), ``--small`` and ``--zoo`` naming the same folder, the
progress of ``zoo check``, the message for a folder that does not exist, no transformers
FutureWarning from ``zoo build``, and every ``zoo build`` option in docs/zoo.md.

The refusal tests replace ``build_zoo`` by a stand-in that records the call and stops: even on
code that does not refuse, nothing is ever written into the package's shipped zoos."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from _cli_helpers import run_cli
from evomerge.cli import main
from evomerge.io import sha256_tree
from evomerge.zoo import shipped_root, zoo_root_in_use
from evomerge.zoo.zoo import SHIPPED

ROOT = Path(__file__).resolve().parents[1]


class Built(Exception):
    """Raised by the build_zoo stand-in: the command got as far as building."""


@pytest.fixture
def builds(monkeypatch):
    """``evomerge.zoo.build_zoo`` (what ``zoo build`` calls) replaced by a recorder that stops."""
    import evomerge.zoo

    calls: list = []

    def stand_in(out, **kwargs):
        calls.append((Path(out), kwargs))
        raise Built

    monkeypatch.setattr(evomerge.zoo, "build_zoo", stand_in)
    return calls


def _shipped_listing() -> list[str]:
    return sorted(str(p.relative_to(SHIPPED)) for p in SHIPPED.rglob("*"))


# --- 1. --out: the shipped zoos and the zoo cache -----------------------------------------------

@pytest.mark.parametrize("where", ["small", "default", "small/experts", "small/new", "new", ".", ".."])
def test_build_refuses_the_shipped_zoo_folders(where, builds, capsys):
    out = SHIPPED / where
    before = _shipped_listing()
    code, _, err = run_cli(["zoo", "build", "--profile", "tiny", "--out", out, "--overwrite"], capsys)
    assert code == 2 and str(out) in err and "shipped" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert builds == []  # refused before any work
    assert _shipped_listing() == before


def test_build_over_the_shipped_small_zoo_changes_nothing(capsys):
    """The reported command, for real (no stand-in): refused, the shipped files untouched."""
    small = shipped_root("small")
    digest = sha256_tree(small)
    code, _, err = run_cli(["zoo", "build", "--profile", "tiny", "--out", small, "--overwrite"], capsys)
    assert code == 2 and str(small) in err, err
    assert sha256_tree(small) == digest
    assert main(["zoo", "verify", "--small"]) == 0


def test_build_library_refuses_the_shipped_folder(monkeypatch, tmp_path):
    """``build_zoo`` itself refuses the shipped folder (tested on a stand-in shipped folder)."""
    from evomerge.errors import ConfigError
    from evomerge.zoo import build_zoo
    from evomerge.zoo import zoo as zoo_mod

    fake = tmp_path / "shipped"
    shutil.copytree(shipped_root("small") / "base", fake / "small" / "base")
    digest = sha256_tree(fake)
    monkeypatch.setattr(zoo_mod, "SHIPPED", fake)
    with pytest.raises(ConfigError, match="shipped"):
        build_zoo(fake / "small", profile="tiny", overwrite=True, progress=False)
    assert sha256_tree(fake) == digest


def test_build_into_the_shipped_zoo_it_already_is_stays_a_no_op(builds, capsys):
    code, out, err = run_cli(["zoo", "build", "--small", "--out", shipped_root("small")], capsys)
    assert code == 0 and "already built" in out, err
    assert builds == []


def test_build_refuses_the_cache_but_for_its_own_cached_folder(builds, monkeypatch, tmp_path, capsys):
    cache = tmp_path / "cache"
    (cache / "zoo-small-v2").mkdir(parents=True)
    monkeypatch.setenv("EVOMERGE_CACHE", str(cache))
    for out in (cache / "zoo-small-v2", cache / "zoo-small-v2" / "sub", cache / "zoo-default-v2-s3", cache, tmp_path):
        code, _, err = run_cli(["zoo", "build", "--profile", "tiny", "--out", out, "--overwrite"], capsys)
        assert code == 2 and str(out) in err and "cache" in err, (out, err)
    assert builds == []
    # the folder the build uses without --out, named: allowed; and a folder of the cache not a zoo's
    for out in (cache / "zoo-tiny-v2", cache / "mine"):
        with pytest.raises(Built):
            main(["zoo", "build", "--profile", "tiny", "--out", str(out)])
        assert builds[-1][0] == out
    with pytest.raises(Built):
        main(["zoo", "build", "--profile", "tiny", "--seed", "3"])
    assert builds[-1][0] == cache / "zoo-tiny-v2-s3"


# --- 2. contradicting and agreeing flags --------------------------------------------------------

def test_build_small_and_profile_disagree(builds, tmp_path, capsys):
    code, _, err = run_cli(["zoo", "build", "--small", "--profile", "tiny", "--out", tmp_path / "z"], capsys)
    assert code == 2 and "--small" in err and "--profile tiny" in err, err
    assert builds == []
    with pytest.raises(Built):
        main(["zoo", "build", "--small", "--profile", "small", "--out", str(tmp_path / "z")])
    assert builds[-1][1]["profile"] == "small"
    with pytest.raises(Built):
        main(["zoo", "build", "--profile", "tiny", "--out", str(tmp_path / "z")])
    assert builds[-1][1]["profile"] == "tiny"


def test_small_and_the_small_zoo_folder_agree(small_zoo, tmp_path, capsys):
    folder = zoo_root_in_use("small")
    code, out, err = run_cli(["evaluate", "--small", "--zoo", folder, "--max-samples", "5"], capsys)
    assert code == 0 and "disagree" not in err, err
    assert out.splitlines()[2].split()[0] == "base"
    code, out, err = run_cli(["zoo", "info", "--small", "--zoo", folder], capsys)
    assert code == 0 and f"zoo: {folder}" in out, err
    # another folder (a copy of the small zoo) is another zoo: still refused, naming both
    other = tmp_path / "copy"
    shutil.copytree(small_zoo.root, other)
    code, _, err = run_cli(["evaluate", "--small", "--zoo", other, "--max-samples", "5"], capsys)
    assert code == 2 and "--small" in err and str(other) in err and "disagree" in err, err


def test_build_into_a_folder_of_other_files_does_not_suggest_overwrite(builds, tmp_path, capsys):
    """A non-empty folder without zoo.json (a user's model, a thesis) is not a zoo to rebuild:
    the refusal asks for another --out, with or without --overwrite (which would delete its
    files), before any work;
    a broken zoo (zoo.json there) is still offered --overwrite."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    code, _, err = run_cli(["zoo", "build", "--profile", "tiny", "--out", out], capsys)
    assert code == 2 and err.strip() == (f"error: {out}: is not empty and holds no zoo (zoo.json missing); "
                                         "build the zoo into a new or empty folder (another --out)"), err
    assert "--overwrite" not in err and builds == [] and (out / "thesis.tex").read_text() == "years of work"
    code, _, err2 = run_cli(["zoo", "build", "--profile", "tiny", "--out", out, "--overwrite"], capsys)
    assert code == 2 and err2 == err and builds == []  # not even with --overwrite: it is no zoo to rebuild
    (out / "zoo.json").write_text("{not json")
    code, _, err = run_cli(["zoo", "build", "--profile", "tiny", "--out", out], capsys)
    assert code == 2 and "pass --overwrite to rebuild it" in err and builds == [], err


# --- 3. --seed ----------------------------------------------------------------------------------

def test_build_negative_seed_is_refused_before_any_work(builds, tmp_path, capsys):
    code, _, err = run_cli(["zoo", "build", "--profile", "tiny", "--seed", "-1", "--out", tmp_path / "z"], capsys)
    assert code == 2 and err.startswith("error: ") and "--seed must be >= 0" in err, err
    assert "Traceback" not in err and builds == [] and not (tmp_path / "z").exists()


def test_build_zoo_refuses_a_negative_seed(tmp_path):
    from evomerge.errors import ConfigError
    from evomerge.zoo import build_zoo

    with pytest.raises(ConfigError, match="seed"):
        build_zoo(tmp_path / "z", profile="tiny", seed=-1, progress=False)
    assert list(tmp_path.iterdir()) == []


# --- 4. zoo check shows its progress ------------------------------------------------------------

def test_zoo_check_shows_progress_on_stderr_and_q_hides_it(small_zoo, capsys):
    args = ["zoo", "check", "--small", "--max-samples", "20", "--k-max", "2"]
    code, out, err = run_cli(args, capsys)
    assert code == 1 and "targets pass" in out, err  # the small zoo fails some targets by design
    # the bar's last state (tqdm may skip the steps between when they come within its 0.1 s)
    assert "zoo check" in err and "5/5" in err, err
    assert "zoo check" not in out
    code, quiet_out, err = run_cli([*args, "-q"], capsys)
    assert code == 1 and err == "", err
    assert quiet_out == out


# --- 5. a folder that does not exist --------------------------------------------------------------

def test_zoo_info_of_a_missing_folder_says_it_does_not_exist(tmp_path, capsys):
    for cmd in ("info", "verify", "check"):
        code, _, err = run_cli(["zoo", cmd, tmp_path / "nope"], capsys)
        assert code == 2 and f"{tmp_path / 'nope'}: folder does not exist" in err, err
        assert "zoo.json missing" not in err
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli(["zoo", "info", tmp_path / "file"], capsys)
    assert code == 2 and "is a file" in err, err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["zoo", "info", tmp_path / "empty"], capsys)
    assert code == 2 and "zoo.json missing" in err, err


# --- 6. no FutureWarning from the build -----------------------------------------------------------

def test_zoo_build_prints_no_future_warning(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    r = subprocess.run([sys.executable, "-m", "evomerge", "zoo", "build", "--profile", "tiny", "--out",
                        str(tmp_path / "z")], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "built tiny zoo" in r.stdout
    assert "Warning" not in r.stderr and "is_gradient_checkpointing" not in r.stderr, r.stderr[-2000:]


def test_new_peft_model_silences_only_that_warning():
    import warnings

    import torch
    from transformers import LlamaForCausalLM

    from evomerge.zoo.build import resolve_profile
    from evomerge.zoo.lora_init import lora_config, new_peft_model
    from evomerge.zoo.model import build_config, build_tokenizer

    prof = resolve_profile("tiny")
    tok = build_tokenizer(list(prof.tasks))
    torch.manual_seed(0)
    base = LlamaForCausalLM(build_config(prof, len(tok), tok))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        new_peft_model(base, lora_config(prof))
        warnings.warn("another FutureWarning", FutureWarning)
    assert [str(w.message) for w in seen] == ["another FutureWarning"]


# --- 7. the docs list every option of zoo build ---------------------------------------------------

def test_docs_list_every_zoo_build_option():
    from typer.main import get_command

    from evomerge.cli.zoo import zoo_app

    build = get_command(zoo_app).commands["build"]
    opts = {o for p in build.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")} - {"--help"}
    doc = (ROOT / "docs" / "zoo.md").read_text()
    start = doc.index("`zoo build` takes")
    para = doc[start:doc.index("\n\n", start)]  # the paragraph that lists the options
    assert {"--threads", "--small", "--seed", "--out"} <= opts
    missing = sorted(o for o in opts if f"`{o}" not in para and f"/{o}`" not in para)
    assert missing == [], missing
