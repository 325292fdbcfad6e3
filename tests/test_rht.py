"""RHT: identity, a hand-written transform (both norm modes, centring, units), tails, ranges,
domains, and one noise for one config across merge, evolve and scale."""

from __future__ import annotations

import math

import pytest
import torch

from evomerge.config import config_from_dict
from evomerge.config.sections import RHTConfig
from evomerge.errors import ConfigError
from evomerge.experts.types import LoraModule, lora_to_ab
from evomerge.merging.rht import apply_rht, heavy_tail_map, rht_transform
from evomerge.seeding import rht_seed, tensor_generator


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def _hand_rht(x, z, *, centre, mu, sigma_g, gamma, alpha, beta, units, preserve_norm):
    """The transform written out element by element in Python floats."""
    xs = x.flatten().tolist()
    zs = z.flatten().tolist()
    n = len(xs)
    mean = sum(xs) / n
    c = mean if centre == "mean" else mu
    s = math.sqrt(sum((v - mean) ** 2 for v in xs) / (n - 1)) if units == "std" else 1.0
    out = []
    for v, e in zip(xs, zs):
        wp = (v - c - sigma_g * s * e) / s  # w' = w - g, g = c + sigma_g s z, in units of s
        t = math.copysign(abs(wp) ** gamma * (1 + alpha * math.exp(-beta * abs(wp))), wp) if wp != 0 else 0.0
        out.append(s * t + c)
    if preserve_norm:
        k = math.sqrt(sum(v * v for v in xs)) / math.sqrt(sum(v * v for v in out))
        out = [v * k for v in out]
    return torch.tensor(out, dtype=torch.float64).reshape(x.shape)


X = torch.tensor([[0.02, -0.01, 0.003], [0.005, -0.03, 0.011]], dtype=torch.float64)
Z = torch.tensor([[1.0, -0.5, 0.25], [0.0, 2.0, -1.0]], dtype=torch.float64)


@pytest.mark.parametrize("preserve_norm", [False, True])
@pytest.mark.parametrize(
    "centre,mu,units,sigma_g,beta",
    [("mean", 0.0, "raw", 0.004, 40.0), ("absolute", 0.002, "raw", 0.004, 40.0), ("mean", 0.0, "std", 0.3, 1.5),
     ("absolute", -0.001, "std", 0.3, 1.5)],
)
def test_transform_matches_hand_computation(centre, mu, units, sigma_g, beta, preserve_norm):
    kw = dict(centre=centre, mu=mu, sigma_g=sigma_g, gamma=0.7, alpha=0.3, beta=beta, units=units,
              preserve_norm=preserve_norm)
    got = rht_transform(X, noise=Z, **kw)
    torch.testing.assert_close(got, _hand_rht(X, Z, **kw), rtol=1e-12, atol=0)
    if preserve_norm:
        assert math.isclose(float(got.norm()), float(X.norm()), rel_tol=1e-12)


def test_literal_transform_amplifies_small_task_vectors_and_norm_mode_removes_it():
    # the finding, now an explicit choice: +-1e-3 (mean 0), gamma 0.9, no noise
    x = torch.tensor([1e-3, -1e-3] * 50, dtype=torch.float64).reshape(10, 10)
    kw = dict(sigma_g=0.0, gamma=0.9, alpha=0.0, beta=1.0)
    literal = rht_transform(x, preserve_norm=False, **kw)
    assert math.isclose(float(literal.abs().max() / x.abs().max()), (1e-3) ** -0.1, rel_tol=1e-12)  # about x2.0
    restored = rht_transform(x, preserve_norm=True, **kw)
    torch.testing.assert_close(restored, x, rtol=1e-12, atol=0)  # equal magnitudes: only the scale changed


@pytest.mark.parametrize("centre,units", [("mean", "raw"), ("absolute", "raw"), ("mean", "std"), ("absolute", "std")])
def test_identity_is_bit_exact(centre, units):
    x = torch.randn(37, 11, generator=_g()) * 1e-3 + 5e-4
    for preserve in (True, False):
        y = rht_transform(x, centre=centre, mu=0.3, sigma_g=0.0, gamma=1.0, alpha=0.0, beta=3.0, units=units,
                          preserve_norm=preserve, generator=_g())
        assert torch.equal(x, y) and y is not x


def test_centring_at_the_mean_makes_the_transform_act_around_it():
    # a shifted tensor: with centre=mean the power acts on w - mean(w); centre absolute 0 on w itself
    x = torch.randn(50, 40, generator=_g(3), dtype=torch.float64) * 0.01 + 0.05
    kw = dict(sigma_g=0.0, gamma=0.5, alpha=0.0, beta=1.0, preserve_norm=False)
    mean_c = rht_transform(x, centre="mean", **kw)
    abs_c = rht_transform(x, centre="absolute", mu=0.0, **kw)
    c = x.mean()
    torch.testing.assert_close(mean_c, torch.sign(x - c) * (x - c).abs().sqrt() + c, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(abs_c, x.sqrt(), rtol=1e-12, atol=0)
    assert abs(float(mean_c.mean() - c)) < 0.1 * float(x.std())  # roughly symmetric around the mean


def test_heavy_tail_map_values():
    x = torch.tensor([-4.0, -1.0, 0.0, 0.25, 2.0], dtype=torch.float64)
    got = heavy_tail_map(x, 0.5, 0.2, 1.5)
    expect = [-(2.0 * (1 + 0.2 * math.exp(-6.0))), -(1 + 0.2 * math.exp(-1.5)), 0.0,
              0.5 * (1 + 0.2 * math.exp(-0.375)), math.sqrt(2.0) * (1 + 0.2 * math.exp(-3.0))]
    assert torch.allclose(got, torch.tensor(expect, dtype=torch.float64), rtol=1e-12)


def test_std_units_are_scale_equivariant():
    x = torch.randn(64, 32, generator=_g(1))
    kw = dict(sigma_g=0.1, gamma=0.6, alpha=0.5, beta=1.0, units="std", preserve_norm=False)
    y_small = rht_transform(x * 1e-3, generator=_g(5), **kw)
    y_big = rht_transform(x, generator=_g(5), **kw)
    assert torch.allclose(y_small * 1e3, y_big, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("units,expect", [("raw", 0.002), ("std", 0.3 * 5e-3)])
def test_noise_std_in_raw_and_std_units(units, expect):
    x = torch.randn(200, 200, generator=_g(6)) * 5e-3
    sigma_g = 0.002 if units == "raw" else 0.3
    y = rht_transform(x, sigma_g=sigma_g, gamma=1.0, alpha=0.0, beta=1.0, units=units, preserve_norm=False,
                      generator=_g(9))
    assert abs(float((x - y).std()) / expect - 1.0) < 0.02


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


BAD = [({"gamma": 0.0}, "gamma"), ({"gamma": 1.2}, "gamma"), ({"alpha": -0.1}, "alpha"), ({"beta": -1.0}, "beta"),
       ({"sigma_g": -0.1}, "sigma_g"), ({"gamma": float("nan")}, "gamma"), ({"alpha": float("inf")}, "alpha")]


@pytest.mark.parametrize("kw,name", BAD)
def test_out_of_range_constants_raise_config_error_naming_the_key(kw, name):
    base = dict(mu=0.0, sigma_g=0.1, gamma=0.9, alpha=0.1, beta=1.0)
    base.update(kw)
    with pytest.raises(ConfigError, match=f"`rht.{name}`"):
        rht_transform(torch.randn(4, 4), generator=_g(), **base)
    with pytest.raises(ConfigError, match=f"`rht.{name}`"):  # and in a config, before any work
        config_from_dict({"rht": {"enabled": True, **kw}})


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


def _lora(seed, fan=False):
    g = _g(seed)
    a, b = torch.randn(4, 12, generator=g), torch.randn(10, 4, generator=g)
    if fan:
        a, b = torch.randn(4, 10, generator=g), torch.randn(12, 4, generator=g)
    return LoraModule(A=a, B=b, scale=0.5, fan_in_fan_out=fan)


def test_domain_delta_transforms_the_dense_products_and_factors_the_factors():
    mods = {"l1.weight": _lora(1), "l2.weight": _lora(2, fan=True)}
    ab = lora_to_ab(mods)
    fans = {k: m.fan_in_fan_out for k, m in mods.items()}
    cfg = RHTConfig(enabled=True, gamma=0.7, sigma_g=0.05, seed=4)
    dense = apply_rht(ab, cfg, 4, fan_in_fan_out=fans)
    assert set(dense) == set(mods)
    for k, m in mods.items():
        assert dense[k].shape == m.delta().shape
        assert torch.equal(dense[k], apply_rht({k: m.delta(torch.float32)}, cfg, 4)[k])
    fcfg = cfg.model_copy(update={"domain": "factors"})
    fac = apply_rht(ab, fcfg, 4)
    assert set(fac) == set(ab)
    for k in ab:  # each factor on its own, as a plain tensor under its key
        assert torch.equal(fac[k], rht_transform(ab[k], sigma_g=0.05, gamma=0.7, alpha=cfg.alpha, beta=cfg.beta,
                                                 generator=tensor_generator(4, k, salt="rht")))
    with pytest.raises(ConfigError, match="rht.domain"):
        apply_rht({"l1.weight": mods["l1.weight"].delta()}, cfg.model_copy(update={"domain": "factors"}), 4)


def test_one_config_gives_the_same_noise_in_merge_evolve_and_scale():
    from evomerge.distributed.actors import PopulationActor
    from evomerge.pipelines.merge.job import _apply_rht
    from evomerge.pipelines.scale.work import CellWorker, ScaleContext

    td = {"l1.weight": torch.randn(10, 12, generator=_g(5)) * 1e-2}
    rht = RHTConfig(enabled=True, gamma=0.8, sigma_g=1e-3, seed=11)
    merged = _apply_rht(td, config_from_dict({"rht": rht.model_dump()}))
    actor = PopulationActor.__new__(PopulationActor)
    actor.fan = {}
    evolved = actor._apply_rht(td, "g3.1", rht)
    worker = CellWorker.__new__(CellWorker)
    worker.ctx = ScaleContext((), (), (), None, None, config_from_dict({}).evaluation, rht)
    scaled = worker._rht(td, True, 0)
    assert torch.equal(merged["l1.weight"], evolved["l1.weight"])
    assert torch.equal(merged["l1.weight"], scaled["l1.weight"])
    assert not torch.equal(scaled["l1.weight"], worker._rht(td, True, 1)["l1.weight"])  # replicate 1: new draw
    assert rht_seed(11) == 11 and rht_seed(11, 1) != rht_seed(11, 2)
