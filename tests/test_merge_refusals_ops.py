"""Refusals and checks an audit found missing: consensus' `k` above the pool size, identical
experts (analyze's rho = 1, merge's copies under other names), an adapter config's
`target_modules` against its weights, the merge progress bar's total, the flags an error names,
and the variance floor's documented formula. Real files: the small zoo's experts, copied and
edited under ``tmp_path``."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from _cli_helpers import run_cli
from evomerge.errors import ConfigError, ExpertLoadError

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture(scope="module")
def zoo(small_zoo):
    return small_zoo


def _errors(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("error: ")]


def _warnings(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("warning: ")]


def _copy(zoo, name: str, dest: Path) -> Path:
    shutil.copytree(zoo.expert_dirs[name], dest)
    return dest


def _edit_config(folder: Path, **changes) -> None:
    f = folder / "adapter_config.json"
    conf = json.loads(f.read_text())
    conf.update(changes)
    f.write_text(json.dumps(conf))


# --- 1: consensus `k` larger than the pool -----------------------------------------------------
def test_consensus_refuses_k_above_the_pool_size_before_any_work(zoo, tmp_path, capsys) -> None:
    out = tmp_path / "cons5"
    rc, stdout, err = run_cli(["merge", "-q", "-e", zoo.expert_dirs["rev_digits"], "-e", zoo.expert_dirs["brackets"],
                               "--method", "consensus", "-p", "k=5", "--rank", "8", "--out", out], capsys)
    assert rc == 2, err
    lines = _errors(err)
    assert len(lines) == 1 and "`k` must be <= the number of experts (2)" in lines[0], err
    assert "pool:" not in stdout  # refused before the pool is read
    assert not out.exists()


def test_consensus_operator_checks_k_against_the_stack() -> None:
    from evomerge.merging.registry import get_merge_method

    m = get_merge_method("consensus")
    d = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    m(d, k=3)  # k = n is allowed
    with pytest.raises(ConfigError, match=r"`k` must be <= the number of experts \(3\)"):
        m(d, k=4)
    with pytest.raises(ConfigError, match=r"`k` must be <= the number of experts \(2\)"):
        m.check_pool_size(2, {"k": 3})
    m.check_pool_size(3, {"k": 3})


# --- 2: identical experts ------------------------------------------------------------------------
def test_n_max_is_one_when_no_expert_lowers_the_variance() -> None:
    from evomerge.theory.variance import adaptive_delta, n_max, variance_curve

    assert adaptive_delta(2.0, 1.0, 4) == 0.0
    assert n_max(2.0, 1.0, adaptive_delta(2.0, 1.0, 4)) == 1  # rho = 1: the docs' "1 when rho = 1"
    assert n_max(2.0, 1.0, 0.5) == 1
    with pytest.raises(ConfigError, match="delta must be a finite number > 0"):
        n_max(2.0, 0.5, 0.0)  # positive drops: a zero Delta would keep every expert
    with pytest.raises(ConfigError, match="delta must be a finite number > 0"):
        n_max(2.0, 1.0, -1.0)
    assert [r["worth_adding"] for r in variance_curve(2.0, 1.0, 3, 0.0)] == [True, False, False]


def test_analyze_identical_experts_gives_n_max_1(zoo, tmp_path, capsys) -> None:
    copy = _copy(zoo, "rev_digits", tmp_path / "rd_copy")
    out = tmp_path / "an"
    rc, _, err = run_cli(["analyze", "-q", "-e", copy, "-e", zoo.expert_dirs["rev_digits"], "-o", out], capsys)
    assert rc == 0, err
    s = json.loads((out / "summary.json").read_text())
    assert s["rho"] == pytest.approx(1.0) and s["delta"] == 0.0
    assert s["n_max"] == 1 and s["stop_k"] == 1
    assert "rho = 1" in s["delta_mode"] and "n_max = 1" in s["delta_mode"]
    assert "UserWarning" not in err  # the drop panel is not log-scaled when every drop is 0


def test_merge_warns_on_identical_experts_under_different_names(zoo, tmp_path, capsys) -> None:
    copy = _copy(zoo, "rev_digits", tmp_path / "rd_copy")
    rc, _, err = run_cli(["merge", "-q", "-e", copy, "-e", zoo.expert_dirs["rev_digits"], "-e",
                          zoo.expert_dirs["brackets"], "--method", "task_arithmetic", "--rank", "8",
                          "--out", tmp_path / "o"], capsys)
    assert rc == 0, err
    warns = _warnings(err)
    assert len(warns) == 1, err
    assert "`rd_copy`" in warns[0] and "`rev_digits`" in warns[0] and "identical weights" in warns[0]
    assert "brackets" not in warns[0]
    rc, _, err = run_cli(["merge", "-q", "-e", zoo.expert_dirs["rev_digits"], "-e", zoo.expert_dirs["brackets"],
                          "--method", "task_arithmetic", "--rank", "8", "--out", tmp_path / "o2"], capsys)
    assert rc == 0 and _warnings(err) == [], err


def test_full_pool_lists_identical_experts(tmp_path) -> None:
    from test_experts_fixtures import make_base, make_full

    from evomerge.experts.pool import load_pool

    make_base(tmp_path / "base", tokenizer=False)
    make_full(tmp_path / "base", tmp_path / "f1", seed=1)
    make_full(tmp_path / "base", tmp_path / "f2", seed=2)
    shutil.copytree(tmp_path / "f1", tmp_path / "f1_copy")
    for check in (True, False):
        said: list[str] = []
        pool = load_pool([tmp_path / "f1", tmp_path / "f2", tmp_path / "f1_copy"], tmp_path / "base",
                         check_finite=check, warn=said.append)
        assert pool.duplicates == [(0, 2)]
        assert len(said) == 1 and "`f1`" in said[0] and "`f1_copy`" in said[0]
    assert load_pool([tmp_path / "f1", tmp_path / "f2"], tmp_path / "base", warn=None).duplicates == []


# --- 3: target_modules against the weights -------------------------------------------------------
def test_target_modules_list_must_name_every_module_of_the_weights(zoo, tmp_path, capsys) -> None:
    narrow = _copy(zoo, "rev_digits", tmp_path / "narrow")
    _edit_config(narrow, target_modules=["q_proj"])
    out = tmp_path / "o"
    rc, _, err = run_cli(["merge", "-q", "-e", narrow, "-e", zoo.expert_dirs["brackets"], "--rank", "8", "--out", out], capsys)
    assert rc == 2, err
    lines = _errors(err)
    assert len(lines) == 1, err
    assert re.search(r"narrow/adapter_config\.json: target_modules \['q_proj'\] does not name 12 of the 14 modules "
                     r"whose LoRA factors adapter_model\.safetensors holds", lines[0]), lines[0]
    assert not out.exists()


def test_target_modules_regex_and_exclude_modules(zoo, tmp_path) -> None:
    from evomerge.experts.pool import load_pool

    ad = _copy(zoo, "rev_digits", tmp_path / "ad")
    _edit_config(ad, target_modules=r".*\.(q_proj|k_proj)")
    with pytest.raises(ExpertLoadError, match=r"ad/adapter_config\.json: target_modules .* does not name 10 of the 14"):
        load_pool([ad])
    _edit_config(ad, target_modules=r"model\.layers\.\d+\.(self_attn|mlp)\.(q|k|v|o|gate|up|down)_proj")
    assert len(load_pool([ad]).keys()) == 14
    _edit_config(ad, target_modules=["self_attn.q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                     "down_proj"])
    assert len(load_pool([ad]).keys()) == 14  # suffixes of dotted names, peft's list rule
    _edit_config(ad, exclude_modules=["v_proj"])
    with pytest.raises(ExpertLoadError, match=r"ad/adapter_config\.json: exclude_modules \['v_proj'\] excludes 2"):
        load_pool([ad])
    _edit_config(ad, exclude_modules=None, target_modules="(")
    with pytest.raises(ExpertLoadError, match=r"target_modules '\(' is not a valid regex"):
        load_pool([ad])


# --- 4: the merge progress bar's total -----------------------------------------------------------
def test_merge_progress_bar_has_a_total(zoo, tmp_path, capsys) -> None:
    rc, _, err = run_cli(["merge", "-e", zoo.expert_dirs["rev_digits"], "-e", zoo.expert_dirs["brackets"],
                          "--method", "ties", "--rank", "8", "--out", tmp_path / "o"], capsys)
    assert rc == 0, err
    assert re.search(r"merge \(ties\): 100%\|[^|]*\| 14/14 ", err), err


def test_pool_stream_knows_its_length(zoo) -> None:
    from evomerge.experts.pool import load_pool

    pool = load_pool([zoo.expert_dirs["rev_digits"], zoo.expert_dirs["brackets"]])
    stream = pool.iter_stacked()
    assert len(stream) == 14
    assert [k for k, _ in stream] == pool.keys()
    assert len(pool.iter_stacked(keys=pool.keys()[:3])) == 3


# --- 5: an error names the flags that carry the bad value ---------------------------------------
def test_param_refusal_names_only_the_flags_that_carry_the_value(zoo, tmp_path, capsys) -> None:
    rc, _, err = run_cli(["merge", "-q", "-e", zoo.expert_dirs["rev_digits"], "-e", zoo.expert_dirs["brackets"],
                          "--method", "slerp", "-p", "t=2", "--rank", "8", "--space", "delta", "--out", tmp_path / "o"], capsys)
    assert rc == 2, err
    lines = _errors(err)
    assert len(lines) == 1 and lines[0].startswith("error: --method + --param: merge method `slerp`: `t` must be in [0, 1]")
    assert "--rank" not in lines[0] and "--space" not in lines[0]
    rc, _, err = run_cli(["merge", "-q", "-e", zoo.expert_dirs["rev_digits"], "-e", zoo.expert_dirs["brackets"],
                          "--method", "slerp", "-p", "density=0.5", "--rank", "8", "--out", tmp_path / "o"], capsys)
    assert rc == 2 and _errors(err)[0].startswith("error: --method + --param: merge method `slerp` has no parameter")


# --- 6: the variance floor: code and docs agree --------------------------------------------------
def test_variance_floor_is_sigma2_max_rho_0_as_documented(tmp_path) -> None:
    from evomerge.analysis import analyze_pool

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, generator=g)
    tv = torch.stack([x + 0.1 * torch.randn(4000, generator=g), -x + 0.1 * torch.randn(4000, generator=g)])
    s = analyze_pool(tv, tmp_path / "an", progress=False).summary
    assert s["rho"] < -0.9 and s["variance_floor"] == 0.0  # sigma2 max(rho, 0), not sigma2 rho
    text = (DOCS / "scale.md").read_text()
    assert "`variance_floor` (= sigma2 max(rho, 0)" in text and "`variance_floor` (= sigma2 rho)" not in text
