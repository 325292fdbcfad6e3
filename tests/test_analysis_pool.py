"""analyze_pool end to end on synthetic LoRA-like experts (real tensors, in-memory pool)."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.stats
import torch

from evomerge.analysis import analyze_pool
from evomerge.errors import ConfigError, OutputExistsError
from evomerge.experts.types import LoraModule
from evomerge.theory import adaptive_delta, n_max, singular_value_tail

OUT, IN, R = 24, 20, 4
KEYS = [f"model.layers.{layer}.self_attn.{m}.weight" for layer in range(3) for m in ("q_proj", "v_proj")]


def make_experts(seed: int = 0) -> list[dict[str, LoraModule]]:
    """5 experts: 0 and 1 share B's column space everywhere, 2 is orthogonal to 0, 3-4 random."""
    g = torch.Generator().manual_seed(seed)
    experts: list[dict[str, LoraModule]] = [{} for _ in range(5)]
    for key in KEYS:
        q, _ = torch.linalg.qr(torch.randn(OUT, 3 * R, generator=g))
        bs = [q[:, :R], q[:, :R] @ torch.randn(R, R, generator=g), q[:, R : 2 * R],
              torch.randn(OUT, R, generator=g), torch.randn(OUT, R, generator=g)]
        shared_a = torch.randn(R, IN, generator=g)
        for i, b in enumerate(bs):
            a = shared_a + 0.7 * torch.randn(R, IN, generator=g)
            experts[i][key] = LoraModule(A=a, B=b, scale=0.5)
    return experts


class FakePool:
    """The ExpertPool surface analyze_pool uses, over real tensors."""

    kind = "lora"

    def __init__(self, experts, fail_at: str | None = None):
        self.experts, self.fail_at = experts, fail_at
        self.names = [f"exp{i}" for i in range(len(experts))]

    def keys(self):
        return list(KEYS)

    def stacked(self, key):
        if key == self.fail_at:
            raise RuntimeError("disk went away")
        return torch.stack([e[key].delta() for e in self.experts])

    def lora(self, i):
        return self.experts[i]


@pytest.fixture(scope="module")
def experts():
    return make_experts()


@pytest.fixture(scope="module")
def flat(experts):
    return torch.stack([torch.cat([e[k].delta().reshape(-1) for k in KEYS]) for e in experts]).double()


@pytest.fixture(scope="module")
def result(experts, tmp_path_factory):
    out = tmp_path_factory.mktemp("analysis") / "pool"
    return analyze_pool(FakePool(experts), out, seed=3, progress=False)


def test_summary_numbers_match_independent_computation(result, flat):
    x = flat.numpy()
    corr = np.corrcoef(x)
    n = x.shape[0]
    rho = (corr.sum() - n) / (n * (n - 1))
    sigma2 = x.var(axis=1).mean()
    s = result.summary
    assert s["sigma2"] == pytest.approx(sigma2, rel=1e-9)
    assert s["rho"] == pytest.approx(rho, abs=1e-9)
    assert s["delta"] == pytest.approx(adaptive_delta(sigma2, rho, n))
    assert s["n_max"] == n_max(sigma2, rho, s["delta"])
    assert s["stop_k"] == min(s["n_max"], n)
    assert s["n_params"] == x.shape[1]
    on_disk = json.loads((result.out_dir / "summary.json").read_text())
    assert on_disk["n_max"] == s["n_max"] and on_disk["sigma2"] == pytest.approx(s["sigma2"])
    assert on_disk["pca_components"] == s["pca_components"]


def test_tables_consistent(result, flat, experts):
    x = flat.numpy()
    out = result.out_dir
    rows = pq.read_table(out / "experts.parquet").to_pylist()
    for i, row in enumerate(rows):
        spectra = [singular_value_tail(experts[i][k].delta()) for k in KEYS]
        assert row["sv_stable_rank"] == pytest.approx(np.mean([s["stable_rank"] for s in spectra]), rel=1e-4)
        assert row["sv_effective_rank"] == pytest.approx(np.mean([s["effective_rank"] for s in spectra]), rel=1e-4)
        assert 1.0 <= row["sv_stable_rank"] <= R
        assert row["norm"] == pytest.approx(np.linalg.norm(x[i]), rel=1e-9)
        assert row["variance"] == pytest.approx(x[i].var(), rel=1e-9)
        assert row["kurtosis"] == pytest.approx(scipy.stats.kurtosis(x[i]), rel=1e-6)
        assert row["frac_zero"] == 0.0
        assert 0 < row["hoyer_sparsity"] < 1
    pair = pq.read_table(out / "pairwise.parquet").to_pylist()
    corr = np.corrcoef(x)
    assert len(pair) == 10
    for r in pair:
        assert r["correlation"] == pytest.approx(corr[r["expert_i"], r["expert_j"]], abs=1e-9)
        xi, xj = x[r["expert_i"]], x[r["expert_j"]]
        assert r["cosine"] == pytest.approx(xi @ xj / np.linalg.norm(xi) / np.linalg.norm(xj), abs=1e-9)
    pca = pq.read_table(out / "pca.parquet").to_pylist()
    sv = np.linalg.svd(x - x.mean(0), compute_uv=False)
    ref = np.cumsum(sv**2) / np.sum(sv**2)
    np.testing.assert_allclose([r["cumulative"] for r in pca][: ref.size], ref, atol=1e-9)
    curve = pq.read_table(out / "variance_floor.parquet").to_pylist()
    assert [r["k"] for r in curve] == [1, 2, 3, 4, 5]
    assert all(r["n_max"] == result.summary["n_max"] for r in curve)
    assert max(r["k"] for r in curve if r["worth_adding"]) == min(result.summary["n_max"], 5)


def test_principal_angles_reflect_construction(result):
    rows = pq.read_table(result.out_dir / "layer_angles.parquet").to_pylist()
    assert len(rows) == len(KEYS) * 10
    assert {r["layer"] for r in rows} == {0, 1, 2}
    same = [r["mean_angle"] for r in rows if (r["expert_i"], r["expert_j"]) == (0, 1)]
    orth = [r["mean_angle"] for r in rows if (r["expert_i"], r["expert_j"]) == (0, 2)]
    assert max(same) < 1e-3
    assert min(orth) == pytest.approx(90.0, abs=1e-3)
    pair = {(r["expert_i"], r["expert_j"]): r for r in pq.read_table(result.out_dir / "pairwise.parquet").to_pylist()}
    assert pair[(0, 1)]["mean_principal_angle"] < 1e-3
    assert pair[(0, 2)]["mean_principal_angle"] == pytest.approx(90.0, abs=1e-3)


def test_figures_are_pngs(result):
    names = {p.name for p in result.figures}
    assert {"pca_cumulative.png", "principal_angles.png", "variance_floor.png", "merged_weight_hist.png",
            "correlation.png"} <= names
    for p in result.figures:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_other_inputs_and_given_delta(experts, flat, tmp_path, result):
    tvs = [{k: e[k].delta() for k in KEYS} for e in experts]
    r2 = analyze_pool(tvs, tmp_path / "td", names=[f"e{i}" for i in range(5)], delta=1e-4, seed=3, progress=False)
    assert r2.summary["sigma2"] == pytest.approx(result.summary["sigma2"], rel=1e-9)
    assert r2.summary["delta_mode"] == "given"
    assert r2.summary["n_max"] == n_max(r2.summary["sigma2"], r2.summary["rho"], 1e-4)
    # full-space deltas: angles from the randomized/exact SVD subspace equal the LoRA ones
    a_lora = pq.read_table(result.out_dir / "layer_angles.parquet").column("mean_angle").to_numpy()
    a_svd = pq.read_table(tmp_path / "td" / "layer_angles.parquet").column("mean_angle").to_numpy()
    np.testing.assert_allclose(np.sort(a_svd), np.sort(a_lora), atol=1e-3)
    r3 = analyze_pool(flat.float(), tmp_path / "mat", progress=False)
    assert r3.summary["rho"] == pytest.approx(result.summary["rho"], abs=1e-6)
    assert r3.summary["mean_principal_angle"] is None
    # relative Delta: a fraction of the first drop sigma2 (1 - rho) / 2
    r4 = analyze_pool(flat.float(), tmp_path / "rel", delta="relative", delta_fraction=0.25, progress=False)
    s4 = r4.summary
    assert s4["delta"] == pytest.approx(0.25 * s4["sigma2"] * (1 - s4["rho"]) / 2)
    assert s4["n_max"] == n_max(s4["sigma2"], s4["rho"], s4["delta"]) == 3  # 1/(n(n-1)) >= 0.25/2: n(n-1) <= 8


def test_refuses_existing_output_and_leaves_nothing_on_failure(experts, tmp_path, result):
    with pytest.raises(OutputExistsError):
        analyze_pool(FakePool(experts), result.out_dir, progress=False)
    target = tmp_path / "broken"
    with pytest.raises(RuntimeError, match="disk went away"):
        analyze_pool(FakePool(experts, fail_at=KEYS[3]), target, progress=False)
    assert not target.exists()
    assert not list(tmp_path.glob(".broken*"))
    with pytest.raises(ConfigError, match="at least 2 experts"):
        analyze_pool(torch.randn(1, 10), tmp_path / "one", progress=False)
    with pytest.raises(ConfigError, match="delta"):
        analyze_pool(FakePool(experts), tmp_path / "bad", delta="often", progress=False)
    with pytest.raises(ConfigError, match="delta_fraction"):
        analyze_pool(FakePool(experts), tmp_path / "bad", delta="relative", delta_fraction=1.0, progress=False)


def test_merged_tails_with_rht(experts, tmp_path):
    from evomerge.merging import rht  # a project module: its absence is a failure, not a skip
    from evomerge.config import RHTConfig

    cfg = RHTConfig(enabled=False, gamma=0.7, alpha=0.2, beta=1.0, sigma_g=0.3, seed=9)
    res = analyze_pool(FakePool(experts), tmp_path / "rht", rht_cfg=cfg, seed=5, progress=False)
    tails = {r["variant"]: r for r in pq.read_table(tmp_path / "rht" / "merged_tails.parquet").to_pylist()}
    merged = {k: torch.stack([e[k].delta() for e in experts]).mean(0) for k in KEYS}
    after = torch.cat([rht.apply_rht({k: v}, cfg, 9)[k].reshape(-1) for k, v in merged.items()]).double().numpy()
    before = torch.cat([v.reshape(-1) for v in merged.values()]).double().numpy()
    assert tails["uniform_merge"]["kurtosis"] == pytest.approx(scipy.stats.kurtosis(before), rel=1e-6)
    assert tails["uniform_merge_rht"]["kurtosis"] == pytest.approx(scipy.stats.kurtosis(after), rel=1e-6)
    assert res.summary["rht"].startswith("compared")  # with enabled: false, the comparison still ran
    assert math.isfinite(res.summary["merged_kurtosis_rht"])
