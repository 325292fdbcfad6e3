"""Operators as their papers (and reference code) define them, against direct computations:
the paper code's magnitude_ties, EMR's per-task scalar rescaler (and fusion-bench's emr_merge
maths on the same inputs), Breadcrumbs' count, and the operators' keyword contract."""

from __future__ import annotations

import pytest
import torch

from evomerge.errors import ConfigError
from evomerge.merging import get_merge_method, register_merge
from evomerge.merging.apply import merge_task_vectors
from evomerge.merging.types import PerTaskMerge


def _g(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ magnitude_ties
def _magnitude_ties_by_hand(d, w, density, rescale):
    n = d.shape[0]
    flat = d.reshape(n, -1).double()
    k = int(density * flat.shape[1])
    pruned = torch.zeros_like(flat)
    for i in range(n):
        top = torch.argsort(flat[i].abs(), descending=True)[:k]  # random data: no ties
        pruned[i, top] = flat[i, top]
    if rescale:
        pruned = pruned / density
    out = torch.zeros(flat.shape[1], dtype=torch.float64)
    for j in range(flat.shape[1]):
        sign = 1.0 if float(pruned[:, j].sum()) >= 0 else -1.0
        out[j] = sum(float(w[i]) * float(pruned[i, j]) for i in range(n) if float(pruned[i, j]) * sign > 0)
    return out.reshape(d.shape[1:])


@pytest.mark.parametrize("density,rescale", [(0.7, True), (0.7, False), (0.35, True), (1.0, True)])
def test_magnitude_ties_is_the_paper_codes_merge(density, rescale):
    d = torch.randn(4, 9, 13, generator=_g(1), dtype=torch.float64)
    w = torch.tensor([0.4, 1.3, 0.2, 0.8], dtype=torch.float64)
    got = get_merge_method("magnitude_ties")(d, w, density=density, rescale=rescale)
    torch.testing.assert_close(got, _magnitude_ties_by_hand(d, w, density, rescale), rtol=1e-12, atol=1e-15)


def test_magnitude_ties_defaults_are_density_07_with_rescale():
    m = get_merge_method("magnitude_ties")
    assert m.resolve({}) == {"density": 0.7, "rescale": True, "lambda": 1.0, "majority_sign_method": "total"}


# ------------------------------------------------------------------ EMR
def _model(n=3, seed=2):
    g = _g(seed)
    shapes = {"a.weight": (6, 5), "b.weight": (4, 7), "b.bias": (7,)}
    experts = [{k: torch.randn(s, generator=g, dtype=torch.float64) * (1 + i) for k, s in shapes.items()}
               for i in range(n)]
    experts[0]["a.weight"][0, 0], experts[1]["a.weight"][0, 0], experts[2]["a.weight"][0, 0] = 1.0, -1.0, 0.0  # sum 0
    return experts


def _emr(experts, **params):
    keys = list(experts[0])
    return merge_task_vectors("emr", ((k, torch.stack([e[k] for e in experts])) for k in keys), params=params)


def test_emr_rescaler_is_one_scalar_per_task_over_the_whole_model():
    experts = _model()
    merged = _emr(experts)
    num = torch.zeros(3, dtype=torch.float64)
    den = torch.zeros(3, dtype=torch.float64)
    for k in experts[0]:
        tau = torch.stack([e[k] for e in experts])
        sign = torch.where(tau.sum(0) > 0, 1.0, -1.0).double()
        mask = tau * sign > 0
        unified = sign * (tau.abs() * mask).amax(0)
        torch.testing.assert_close(merged[k].unified, unified, rtol=0, atol=0)
        for i in range(3):
            num[i] += tau[i].abs().mean()
            den[i] += (unified * mask[i]).abs().mean()
    per_task = num / den
    for k, v in merged.items():
        torch.testing.assert_close(v.rescalers, per_task, rtol=1e-12, atol=0)
    assert len({tuple(v.rescalers.tolist()) for v in merged.values()}) == 1


def test_emr_per_tensor_rescaler_option():
    experts = _model()
    merged = _emr(experts, rescaler="tensor")
    for k in experts[0]:
        tau = torch.stack([e[k] for e in experts])
        v = merged[k]
        want = torch.stack([tau[i].abs().sum() / (v.unified * v.masks[i]).abs().sum() for i in range(3)])
        torch.testing.assert_close(v.rescalers, want, rtol=1e-12, atol=0)
    assert len({tuple(v.rescalers.tolist()) for v in merged.values()}) == 3  # differs by tensor


def _fusion_bench_emr_maths(task_vectors):
    """fusion-bench's ``emr_merge`` (fusion_bench/method/emr_merging/utils.py) restated: flag =
    (sum > 0) * 2 - 1; mask = param * flag > 0; unified = max |mask * param| * flag; rescaler =
    sum over params of mean|param| / sum over params of mean|unified * mask|."""
    n = len(task_vectors)
    scales, new_scales = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    unified, masks = {}, {}
    for name in task_vectors[0]:
        total = sum(tv[name] for tv in task_vectors)
        flag = (total > 0).double() * 2 - 1
        best = torch.zeros_like(task_vectors[0][name])
        masks[name] = []
        for m, tv in enumerate(task_vectors):
            mask = tv[name] * flag > 0
            masks[name].append(mask)
            best = torch.where((mask * tv[name]).abs() > best, (mask * tv[name]).abs(), best)
            scales[m] += tv[name].abs().mean()
        unified[name] = best * flag
    for m in range(n):
        for name in unified:
            new_scales[m] += (unified[name] * masks[name][m]).abs().mean()
    return unified, masks, scales / new_scales


def test_emr_equals_fusion_bench_emr_merge_on_identical_inputs():
    experts = _model(n=4, seed=7)
    merged = _emr(experts)
    unified, masks, rescalers = _fusion_bench_emr_maths(experts)
    for k in experts[0]:
        assert torch.equal(merged[k].unified, unified[k])
        assert torch.equal(merged[k].masks, torch.stack(masks[k]))
        torch.testing.assert_close(merged[k].rescalers, rescalers, rtol=1e-12, atol=0)
        for i in range(4):  # what task i is served
            torch.testing.assert_close(merged[k].task_delta(i), unified[k] * masks[k][i] * rescalers[i])


def test_emr_empty_mask_gets_rescaler_zero():
    d = torch.stack([torch.ones(3, 3), torch.zeros(3, 3)]).double()
    merged = merge_task_vectors("emr", [("w", d)])
    assert merged["w"].rescalers.tolist() == [1.0, 0.0]


# ------------------------------------------------------------------ Breadcrumbs
@pytest.mark.parametrize("numel,density,gamma", [(10, 0.25, 0.15), (97, 0.5, 0.07), (1000, 0.333, 0.0105), (7, 0.9, 0.1)])
def test_breadcrumbs_keeps_int_density_n_as_mergekit(numel, density, gamma):
    x = torch.randn(1, numel, generator=_g(numel), dtype=torch.float64)
    out = get_merge_method("breadcrumbs")(x, density=density, gamma=gamma)
    # mergekit's magnitude_outliers: n_top = int(gamma N), keep int(density N), the rest bottom
    n_top, n_keep = int(gamma * numel), int(density * numel)
    order = torch.argsort(x[0].abs(), descending=True)
    want = torch.zeros(numel, dtype=torch.bool)
    want[order[n_top:n_top + n_keep]] = True
    assert int(torch.count_nonzero(out)) == n_keep
    assert torch.equal(out != 0, want)


def test_breadcrumbs_old_count_case_is_fixed():
    # int((gamma + d) N) - int(gamma N) = 3 here, one more than int(d N) = 2
    assert int((0.15 + 0.25) * 10) - int(0.15 * 10) == 3
    out = get_merge_method("breadcrumbs")(torch.arange(1.0, 11.0).view(1, 10), density=0.25, gamma=0.15)
    assert out.nonzero().flatten().tolist() == [7, 8]  # 10 dropped (top 1), 9 and 8 kept (values at index 8, 7)


# ------------------------------------------------------------------ keyword contract
def test_stray_keyword_is_an_error_naming_it():
    d = torch.randn(2, 4, 4, generator=_g(0))
    with pytest.raises(ConfigError, match="no parameter `bogus`"):
        get_merge_method("ties")(d, density=0.5, bogus=1)
    ties = get_merge_method("ties").fn
    with pytest.raises(TypeError, match="bogus"):
        ties(d, None, generator=None, stats=None, density=0.5, lam=1.0, majority_sign_method="total",
             disjoint="count", bogus=1)


def test_lambda_reaches_the_operator_as_lam():
    d = torch.randn(3, 5, generator=_g(4), dtype=torch.float64)
    torch.testing.assert_close(get_merge_method("task_arithmetic")(d, **{"lambda": 0.25}), 0.25 * d.sum(0))


def test_registration_refuses_kwargs_and_mismatched_keywords():
    with pytest.raises(ValueError, match="kwargs"):
        @register_merge("__test_kwargs")
        def bad(deltas, weights, *, generator=None, stats=None, **kw):  # pragma: no cover
            return deltas[0]
    with pytest.raises(ValueError, match="keyword-only"):
        @register_merge("__test_missing")
        def bad2(deltas, weights, *, generator=None, stats=None, extra):  # pragma: no cover
            return deltas[0]


def test_per_task_merge_to_keeps_masses():
    v = get_merge_method("emr")(torch.randn(2, 3, 3, generator=_g(1)))
    assert isinstance(v, PerTaskMerge) and v.to("cpu").task_mass is not None
