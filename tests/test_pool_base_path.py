"""The experts of a LoRA pool must name one base model (``base_model_name_or_path``): local paths
are compared as the folders they name (a trailing slash, a relative path, a link to the same
folder are the same base), hub ids as written; names of two different bases are refused."""

from __future__ import annotations

import json
import os

import pytest
import torch

from _cli_helpers import one_error, run_cli
from evomerge.errors import ExpertLoadError
from evomerge.experts.pool import load_pool
from test_experts_fixtures import make_base, make_lora

torch.set_num_threads(1)

NAMES = {  # adapter folder (under experts/) -> its base_model_name_or_path; {root}: the test's folder
    "abs": "{root}/base",
    "slash": "{root}/base/",
    "dotted": "{root}/experts/../base",
    "link": "{root}/baselink",
    "rel": "../base",  # as written when trained from experts/
    "dotrel": "./base",  # as written when trained from the root
    "gone": "/nowhere/base",  # trained on another machine
    "gone_slash": "/nowhere/base/",
    "hub": "org/model",
    "hub2": "org/model",
    "hub_other": "org/other",
    "other": "{root}/otherbase",
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("basepath")
    make_base(root / "base", tokenizer=False)
    make_base(root / "otherbase", seed=1, tokenizer=False)  # same shapes, another model
    os.symlink(root / "base", root / "baselink")
    for i, (name, base_name) in enumerate(NAMES.items()):
        make_lora(root / "base", root / "experts" / name, seed=i, base_name=base_name.format(root=root))
    return root


def _pool(root, *names, base=True):
    return load_pool([root / "experts" / n for n in names], base=root / "base" if base else None)


@pytest.mark.parametrize("other", ["slash", "dotted", "link"])
def test_absolute_spellings_of_one_folder_are_one_base(root, other):
    for base in (True, False):
        assert _pool(root, "abs", other, base=base).kind == "lora"


def test_paths_of_a_folder_that_does_not_exist_here_compare_as_paths(root):
    _pool(root, "gone", "gone_slash", base=False)


def test_a_relative_path_is_read_from_the_working_folder(root, monkeypatch):
    """As peft and transformers read it when they load the adapter's base."""
    monkeypatch.chdir(root / "experts")
    _pool(root, "abs", "rel")
    _pool(root, "rel", "slash", base=False)
    with pytest.raises(ExpertLoadError, match=r"dotrel/adapter_config\.json: base_model_name_or_path './base' "
                                              r"differs from .*a relative path is read from the working folder"):
        _pool(root, "abs", "dotrel")
    monkeypatch.chdir(root)
    _pool(root, "dotrel", "abs")
    _pool(root, "dotrel", "link", base=False)


def test_hub_ids_are_compared_as_written(root):
    _pool(root, "hub", "hub2")
    with pytest.raises(ExpertLoadError, match=r"hub_other/adapter_config\.json: base_model_name_or_path 'org/other' "
                                              r"differs from 'org/model' in .*hub/adapter_config\.json"):
        _pool(root, "hub", "hub_other")
    with pytest.raises(ExpertLoadError, match=r"hub/adapter_config\.json: base_model_name_or_path 'org/model' differs"):
        _pool(root, "abs", "hub", base=False)


def test_two_local_bases_are_refused_even_with_equal_shapes(root):
    with pytest.raises(ExpertLoadError, match=r"other/adapter_config\.json: base_model_name_or_path '.*/otherbase' "
                                              r"differs from '.*/base' in .*abs/adapter_config\.json"):
        _pool(root, "abs", "other", base=False)


def test_merge_cli_accepts_a_relative_and_an_absolute_name_of_its_base(root, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(root / "experts")
    e = root / "experts"
    code, _, err = run_cli(["merge", "-q", "--base", root / "base", "-e", e / "slash", "-e", e / "rel", "-e", e / "abs",
                            "--rank", "4", "--out", tmp_path / "m"], capsys)
    assert code == 0, err
    manifest = json.loads((tmp_path / "m" / "evomerge_manifest.json").read_text())
    # --base, resolved: the experts' three spellings of it were checked against it (merged_base_name)
    assert manifest["base_model_name_or_path"] == str((root / "base").resolve())
    line = one_error(["merge", "-q", "--base", root / "base", "-e", e / "abs", "-e", e / "other", "--rank", "4",
                      "--out", tmp_path / "o"], capsys)
    assert "other/adapter_config.json: base_model_name_or_path" in line and not (tmp_path / "o").exists()
