"""Contract every registered merge method must satisfy (parametrised over the registry)."""

from __future__ import annotations

import pytest
import torch

from evomerge.errors import ConfigError
from evomerge.merging import all_methods, available_methods, get_merge_method
from evomerge.merging.types import PerTaskMerge

METHODS = available_methods()
REQUIRED = {"weight_average", "task_arithmetic", "ties", "dare_linear", "dare_ties", "magnitude_prune", "fisher", "regmean", "emr"}

# How weights [1, -1] on two identical experts behave, per method (every method must be listed):
CANCELS = {"task_arithmetic", "ties", "magnitude_prune", "magnitude_ties", "breadcrumbs", "consensus", "slerp"}
REJECTS_NEGATIVE = {"weight_average", "fisher", "regmean"}  # normalising / importance weights
NOT_MEANINGFUL = {"dare_linear", "dare_ties", "emr"}  # independent random masks per expert; EMR keeps the max magnitude

# Methods with a density: at density 1 they equal this method with these params.
DENSITY_ONE = {
    "magnitude_prune": ("task_arithmetic", {}),
    "dare_linear": ("task_arithmetic", {}),
    "dare_ties": ("ties", {"density": 1.0}),
    "breadcrumbs": ("task_arithmetic", {}),
}


def _n(name: str) -> int:
    return 2 if name == "slerp" else 3


def _stats(name: str, n: int, shape: tuple[int, ...], gen: torch.Generator) -> dict | None:
    m = get_merge_method(name)
    if "fisher" in m.needs:
        return {"fisher": torch.rand((n, *shape), generator=gen) + 0.1}
    if "gram" in m.needs:
        x = torch.randn(n, 20, shape[1], generator=gen)
        return {"gram": x.transpose(1, 2) @ x}
    return None


def _as_tensor(out) -> torch.Tensor:
    return out.merged() if isinstance(out, PerTaskMerge) else out


def _call(name, deltas, weights=None, params=None, seed=0, stats=None):
    m = get_merge_method(name)
    gen = torch.Generator().manual_seed(seed)
    if stats is None:
        stats = _stats(name, deltas.shape[0], tuple(deltas.shape[1:]), torch.Generator().manual_seed(99))
    return m(deltas, weights, generator=gen, stats=stats, **(params or {}))


def _deltas(n: int, shape=(6, 8), seed=0) -> torch.Tensor:
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))


def test_required_methods_registered_and_classified():
    assert REQUIRED <= set(METHODS)
    assert set(METHODS) == CANCELS | REJECTS_NEGATIVE | NOT_MEANINGFUL, "classify every new method above"


@pytest.mark.parametrize("name", METHODS)
def test_shape_dtype_and_no_input_mutation(name):
    n = _n(name)
    d = _deltas(n)
    w = torch.linspace(0.5, 1.5, n)
    stats = _stats(name, n, (6, 8), torch.Generator().manual_seed(1))
    copies = (d.clone(), w.clone(), {k: v.clone() for k, v in (stats or {}).items()})
    out = _call(name, d, w, stats=stats)
    t = _as_tensor(out)
    assert t.shape == d.shape[1:] and t.dtype == d.dtype
    assert torch.isfinite(t).all()
    assert torch.equal(d, copies[0]) and torch.equal(w, copies[1])
    for k, v in (stats or {}).items():
        assert torch.equal(v, copies[2][k])


@pytest.mark.parametrize("name", METHODS)
def test_opposite_weights_on_identical_experts(name):
    one = _deltas(1)[0]
    d = torch.stack([one, one])
    stats = _stats(name, 2, (6, 8), torch.Generator().manual_seed(2))
    if stats:  # identical experts have identical statistics
        stats = {k: torch.stack([v[0], v[0]]) for k, v in stats.items()}
    w = torch.tensor([1.0, -1.0])
    if name in REJECTS_NEGATIVE:  # named as negative, not only as weights summing to 0
        for bad in (w, torch.tensor([2.0, -1.0])):
            with pytest.raises(ConfigError, match=rf"`{name}`: `weights` must be >= 0"):
                _call(name, d, bad, stats=stats)
    elif name in CANCELS:
        out = _call(name, d, w, stats=stats)
        assert torch.allclose(_as_tensor(out), torch.zeros_like(one), atol=1e-6)
    else:
        pytest.skip(f"{name}: cancellation is not part of its definition")


@pytest.mark.parametrize("name", METHODS)
def test_zero_weights_give_zero_delta(name):
    n = _n(name)
    out = _call(name, _deltas(n), torch.zeros(n))
    assert torch.count_nonzero(_as_tensor(out)) == 0
    if isinstance(out, PerTaskMerge):
        assert all(torch.count_nonzero(out.task_delta(i)) == 0 for i in range(n))


@pytest.mark.parametrize("name", sorted(DENSITY_ONE))
def test_density_one_prunes_nothing(name):
    d = _deltas(3)
    w = torch.tensor([0.7, 1.1, -0.4])
    params = {"density": 1.0, "gamma": 0.0} if name == "breadcrumbs" else {"density": 1.0}
    ref_name, ref_params = DENSITY_ONE[name]
    got = _call(name, d, w, params, seed=3)
    ref = _call(ref_name, d, w, ref_params)
    assert torch.allclose(got, ref, atol=1e-6)


@pytest.mark.parametrize("density", [0.1, 0.25, 0.5, 0.9])
def test_magnitude_prune_keeps_exactly_density_fraction(density):
    d = _deltas(1, shape=(50, 40), seed=5)
    out = _call("magnitude_prune", d, params={"density": density})
    assert int(torch.count_nonzero(out)) == int(density * d[0].numel())
    kept = out != 0
    # the kept entries are the largest magnitudes
    assert d[0].abs()[kept].min() >= d[0].abs()[~kept].max()


def test_magnitude_prune_exact_count_with_ties_at_threshold():
    x = torch.tensor([[3.0, -1.0, 1.0, 1.0, -1.0, 0.5, 2.0, 1.0]])
    out = _call("magnitude_prune", x, params={"density": 0.5})
    assert int(torch.count_nonzero(out)) == 4
    assert out[0] == 3.0 and out[6] == 2.0 and out[1] == -1.0 and out[2] == 1.0  # ties: lowest index first


@pytest.mark.parametrize("name", METHODS)
def test_seeded_results_reproduce(name):
    n = _n(name)
    d = _deltas(n)
    a = _as_tensor(_call(name, d, seed=11))
    b = _as_tensor(_call(name, d, seed=11))
    assert torch.equal(a, b)
    if get_merge_method(name).random:
        c = _as_tensor(_call(name, d, seed=12))
        assert not torch.equal(a, c)


@pytest.mark.parametrize("name", METHODS)
def test_unknown_parameter_names_method_and_parameter(name):
    n = _n(name)
    with pytest.raises(ConfigError) as e:
        _call(name, _deltas(n), params={"not_a_param": 1})
    assert f"`{name}`" in str(e.value) and "not_a_param" in str(e.value)


def _bad_values(p):
    if p.choices is not None:
        return ["bogus"]
    out = []
    if p.low is not None:
        out.append(p.low if p.low_open else p.low - 1)
    if p.high is not None:
        out.append(p.high if p.high_open else p.high + 1)
    if p.kind in (int, float):
        out.append("text")
    return out


_PARAM_CASES = [(name, p, v) for name, m in sorted(all_methods().items()) for p in m.params for v in _bad_values(p)]


@pytest.mark.parametrize("name,param,value", _PARAM_CASES, ids=[f"{n}-{p.name}-{v}" for n, p, v in _PARAM_CASES])
def test_out_of_range_parameter_is_config_error(name, param, value):
    with pytest.raises(ConfigError) as e:
        _call(name, _deltas(_n(name)), params={param.name: value})
    msg = str(e.value)
    assert f"merge method `{name}`" in msg and f"`{param.name}`" in msg and repr(value) in msg


def test_ties_density_message_format():
    with pytest.raises(ConfigError, match=r"merge method `ties`: `density` must be in \(0, 1\]. Got 1.5 instead."):
        get_merge_method("ties").resolve({"density": 1.5})


@pytest.mark.parametrize("name", METHODS)
def test_wrong_weight_count_is_config_error(name):
    n = _n(name)
    with pytest.raises(ConfigError, match="weights"):
        _call(name, _deltas(n), torch.ones(n + 1))


@pytest.mark.parametrize("name", METHODS)
def test_half_precision_matches_float32(name):
    n = _n(name)
    d = _deltas(n)
    ref = _as_tensor(_call(name, d, seed=4))
    got = _as_tensor(_call(name, d.to(torch.bfloat16), seed=4))
    assert got.dtype == torch.bfloat16
    if name in ("magnitude_prune", "ties", "breadcrumbs", "consensus", "emr"):
        # rounding can move entries across the top-k threshold or a mask boundary: compare most entries
        close = torch.isclose(got.float(), ref, rtol=2e-2, atol=2e-2)
        assert close.float().mean() > 0.9
    else:
        assert torch.allclose(got.float(), ref, rtol=2e-2, atol=3e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", METHODS)
def test_runs_on_cuda_like_on_cpu(name):
    n = _n(name)
    d = _deltas(n, shape=(64, 48))
    stats = _stats(name, n, (64, 48), torch.Generator().manual_seed(1))
    m = get_merge_method(name)
    cpu = _as_tensor(m(d, None, generator=torch.Generator().manual_seed(0), stats=stats))
    gpu = _as_tensor(
        m(d.cuda(), None, generator=torch.Generator("cuda").manual_seed(0),
          stats=None if stats is None else {k: v.cuda() for k, v in stats.items()})
    )
    assert gpu.device.type == "cuda" and gpu.shape == cpu.shape
    if not m.random:  # random draws differ between CPU and CUDA generators
        assert torch.allclose(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)
