"""RHT post-processing: identity, hand-computed formula, norm, seeds, tails, ranges."""

from __future__ import annotations

import math

import pytest
import torch

from evomerge.config.sections import RHTConfig
from evomerge.errors import ConfigError
from evomerge.rht import apply_rht, heavy_tail_map, rht_transform


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_identity_is_bit_exact():
    x = torch.randn(37, 11, generator=_g()) * 1e-3
    for preserve in (True, False):
        y = rht_transform(x, mu=0.0, sigma_g=0.0, gamma=1.0, alpha=0.0, beta=3.0, preserve_norm=preserve, generator=_g())
        assert torch.equal(x, y) and y is not x


def test_formula_matches_hand_computation_with_fixed_noise():
    x = torch.tensor([[0.02, -0.01, 0.0], [0.005, -0.03, 0.01]], dtype=torch.float64)
    z = torch.tensor([[1.0, -0.5, 0.25], [0.0, 2.0, -1.0]], dtype=torch.float64)
    mu, sg, gamma, alpha, beta = 0.001, 0.2, 0.7, 0.3, 2.0
    y = rht_transform(x, mu=mu, sigma_g=sg, gamma=gamma, alpha=alpha, beta=beta, preserve_norm=False, noise=z)
    # by hand, element by element
    xs = x.flatten().tolist()
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((v - mean) ** 2 for v in xs) / (len(xs) - 1))
    wp = [v - (mu + sg * std * n) for v, n in zip(xs, z.flatten().tolist())]
    rms = math.sqrt(sum(v * v for v in wp) / len(wp))
    expect = []
    for v in wp:
        u = abs(v) / rms
        expect.append(math.copysign(1.0, v) * u**gamma * (1 + alpha * math.exp(-beta * u)) * rms if v != 0 else 0.0)
    assert torch.allclose(y.flatten(), torch.tensor(expect, dtype=torch.float64), rtol=1e-12, atol=0)


def test_heavy_tail_map_values():
    x = torch.tensor([-4.0, -1.0, 0.0, 0.25, 2.0], dtype=torch.float64)
    got = heavy_tail_map(x, 0.5, 0.2, 1.5)
    expect = [-(2.0 * (1 + 0.2 * math.exp(-6.0))), -(1 + 0.2 * math.exp(-1.5)), 0.0,
              0.5 * (1 + 0.2 * math.exp(-0.375)), math.sqrt(2.0) * (1 + 0.2 * math.exp(-3.0))]
    assert torch.allclose(got, torch.tensor(expect, dtype=torch.float64), rtol=1e-12)


def test_preserve_norm_and_scale_equivariance():
    x = torch.randn(64, 32, generator=_g(1))
    kw = dict(mu=0.0, sigma_g=0.1, gamma=0.6, alpha=0.5, beta=1.0)
    y = rht_transform(x, preserve_norm=True, generator=_g(5), **kw)
    assert torch.allclose(y.norm(), x.norm(), rtol=1e-5)
    assert not torch.allclose(y, x, atol=1e-3)
    # RMS normalisation: scaling the input scales the output (same noise draw)
    y_small = rht_transform(x * 1e-3, preserve_norm=False, generator=_g(5), **kw)
    y_big = rht_transform(x, preserve_norm=False, generator=_g(5), **kw)
    assert torch.allclose(y_small * 1e3, y_big, rtol=1e-4, atol=1e-6)


def test_seed_reproducibility_and_per_key_independence():
    td = {"a.weight": torch.randn(16, 8, generator=_g(2)), "b.weight": torch.randn(16, 8, generator=_g(3))}
    cfg = RHTConfig(enabled=True, sigma_g=0.2, gamma=0.8, alpha=0.1, beta=1.0)
    r1, r2, r3 = apply_rht(td, cfg, seed=7), apply_rht(td, cfg, seed=7), apply_rht(td, cfg, seed=8)
    assert all(torch.equal(r1[k], r2[k]) for k in td)
    assert not torch.equal(r1["a.weight"], r3["a.weight"])
    # a key's result does not depend on the other keys (order, presence)
    alone = apply_rht({"b.weight": td["b.weight"]}, cfg, seed=7)
    assert torch.equal(alone["b.weight"], r1["b.weight"])
    assert torch.equal(td["a.weight"], torch.randn(16, 8, generator=_g(2)))  # input untouched


def test_apply_rht_leaves_1d_and_integer_tensors():
    td = {"w": torch.randn(8, 8, generator=_g()), "bias": torch.randn(8, generator=_g(1)), "ids": torch.arange(5)}
    out = apply_rht(td, RHTConfig(gamma=0.5), seed=0)
    assert torch.equal(out["bias"], td["bias"]) and torch.equal(out["ids"], td["ids"])
    assert not torch.equal(out["w"], td["w"])
    out1 = apply_rht(td, RHTConfig(gamma=0.5), seed=0, include_1d=True)
    assert not torch.equal(out1["bias"], td["bias"])


def _kurtosis(t: torch.Tensor) -> float:
    t = t.double().flatten()
    c = t - t.mean()
    return float((c**4).mean() / (c**2).mean() ** 2)


def _abs_moment(p: float) -> float:  # E|Z|^p for Z ~ N(0, 1)
    return 2 ** (p / 2) * math.gamma((p + 1) / 2) / math.sqrt(math.pi)


@pytest.mark.parametrize("gamma", [0.5, 0.8])
def test_power_step_lowers_kurtosis_of_gaussian_as_closed_form_predicts(gamma):
    # sign(x)|x|^gamma of a Gaussian has kurtosis E|Z|^{4g} / (E|Z|^{2g})^2 < 3 for g < 1:
    # the transform compresses the tails (despite the method's name). Monte Carlo vs closed form.
    x = torch.randn(400_000, generator=_g(4), dtype=torch.float64)
    y = rht_transform(x, sigma_g=0.0, gamma=gamma, alpha=0.0, beta=1.0, preserve_norm=True)
    expect = _abs_moment(4 * gamma) / _abs_moment(2 * gamma) ** 2
    assert abs(_kurtosis(y) - expect) < 0.03
    assert _kurtosis(y) < _kurtosis(x) - 0.2
    assert abs(_kurtosis(x) - 3.0) < 0.05


def test_noise_std_is_relative_to_tensor_std():
    x = torch.randn(200, 200, generator=_g(6)) * 5e-3
    y = rht_transform(x, sigma_g=0.3, gamma=1.0, alpha=0.0, beta=1.0, preserve_norm=False, generator=_g(9))
    ratio = float((x - y).std() / x.std())
    assert abs(ratio - 0.3) < 0.01


@pytest.mark.parametrize(
    "kw,name",
    [({"gamma": 0.0}, "gamma"), ({"gamma": 1.2}, "gamma"), ({"alpha": -0.1}, "alpha"), ({"beta": -1.0}, "beta"),
     ({"sigma_g": -0.1}, "sigma_g"), ({"gamma": float("nan")}, "gamma")],
)
def test_out_of_range_constants_raise_config_error(kw, name):
    base = dict(mu=0.0, sigma_g=0.1, gamma=0.9, alpha=0.1, beta=1.0)
    base.update(kw)
    with pytest.raises(ConfigError, match=f"`{name}`"):
        rht_transform(torch.randn(4, 4), generator=_g(), **base)


def test_noise_without_generator_is_config_error():
    with pytest.raises(ConfigError, match="Generator"):
        rht_transform(torch.randn(4, 4), sigma_g=0.1, gamma=0.9, alpha=0.1, beta=1.0)


def test_apply_rht_on_per_task_merge_transforms_the_unified_vector():
    from evomerge.merging import get_merge_method

    d = torch.randn(3, 10, 12, generator=_g(8))
    emr = get_merge_method("emr")(d)
    cfg = RHTConfig(gamma=0.7)
    out = apply_rht({"w": emr}, cfg, seed=1)["w"]
    assert torch.equal(out.unified, apply_rht({"w": emr.unified}, cfg, seed=1)["w"])
    assert torch.equal(out.masks, emr.masks) and torch.equal(out.rescalers, emr.rescalers)
