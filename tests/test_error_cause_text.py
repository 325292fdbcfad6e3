"""``evomerge.errors.cause_text``: a library's error quoted in one ``error:`` line, whole when it
fits, else cut at a word boundary and marked (it used to be cut at 300 characters mid-word, so
transformers' missing-tokenizer message ended "... to convert a slow tokenizer to a )")."""

from __future__ import annotations

import shutil

import pytest

from evomerge.errors import ExpertLoadError, cause_text


def test_short_messages_are_whole_on_one_line() -> None:
    assert cause_text(ValueError("bad\n  value\tthere")) == "bad value there"
    assert cause_text(ValueError("")) == "ValueError"


def test_long_messages_are_cut_between_words_and_marked() -> None:
    words = [f"w{i:03d}" for i in range(400)]  # 4 characters + a space each
    got = cause_text(RuntimeError(" ".join(words)), limit=102)
    assert got.endswith(" ...")
    kept = got[:-4].split(" ")
    assert kept == words[:len(kept)] and len(got[:-4]) <= 102 and len(kept) == 20
    # a limit that ends exactly on a word keeps that word (20 words are 99 characters)
    assert cause_text(RuntimeError(" ".join(words)), limit=99) == " ".join(words[:20]) + " ..."
    # one long word is cut where it must be
    assert cause_text(RuntimeError("x" * 1000), limit=50) == "x" * 50 + " ..."


def test_the_tokenizer_error_of_a_base_without_tokenizer_files_is_quoted_whole(small_zoo, tmp_path) -> None:
    from transformers import AutoTokenizer

    from evomerge.evaluation.encoding import load_tokenizer

    base = tmp_path / "base"
    base.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(small_zoo.base_dir / name, base / name)
    with pytest.raises(Exception) as original:
        AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    with pytest.raises(ExpertLoadError) as err:
        load_tokenizer(base)
    whole = " ".join(str(original.value).split())
    assert str(err.value) == f"{base}: cannot load the tokenizer ({whole})"
