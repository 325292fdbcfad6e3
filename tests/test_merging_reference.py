"""Merge operators against independent references: peft's merge_utils, hand-worked tensors,
RegMean's least-squares closed form on a real nn.Linear, and exact LoRA algebra."""

from __future__ import annotations

import pytest
import torch
from peft.utils import merge_utils as peft_mu

from evomerge.errors import ConfigError
from evomerge.experts.types import LoraModule
from evomerge.merging import get_merge_method
from evomerge.merging.apply import merge_lora, merge_task_vectors
from evomerge.merging.types import PerTaskMerge


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _peft(name, tensors, weights, density, seed, sign=None):
    """peft's function on the same inputs; DARE uses the global RNG, seeded like our generator."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fn = getattr(peft_mu, name)
        args = [list(tensors), weights] + ([density] if density is not None else []) + ([sign] if sign else [])
        return fn(*args)


CASES = [
    ("task_arithmetic", None, None),
    ("magnitude_prune", 0.3, None),
    ("ties", 0.3, "total"),
    ("ties", 0.2, "frequency"),
    ("dare_linear", 0.4, None),
    ("dare_ties", 0.4, "total"),
    ("dare_ties", 0.6, "frequency"),
]


@pytest.mark.parametrize("shape", [(4, 64, 48), (3, 512, 512)])  # the second exercises the sampled top-k path
@pytest.mark.parametrize("name,density,sign", CASES)
def test_bit_exact_against_peft(name, density, sign, shape):
    # DARE with rng="peft": our generator seeded s draws the same uniforms as peft's
    # torch.bernoulli after torch.manual_seed(s), so the masks are reproduced exactly (not injected).
    d = torch.randn(shape, generator=_g(1))
    w = torch.tensor([0.9, -0.3, 1.2, 0.5][: shape[0]])
    params = {} if density is None else {"density": density}
    if name.startswith("dare"):
        params["rng"] = "peft"
    if sign:
        params["majority_sign_method"] = sign
    ours = get_merge_method(name)(d, w, generator=_g(5), **params)
    ref = _peft(name, d, w, density, 5, sign)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("name,density,sign", CASES)
def test_close_to_peft_on_odd_shapes(name, density, sign):
    # For some shapes torch.sum(dim=0) reduces in another order than our expert-by-expert sum:
    # results then agree to float rounding, with the same support.
    d = torch.randn(5, 7, 33, 17, generator=_g(2))
    w = torch.tensor([0.4, 1.0, -0.8, 0.3, 1.5])
    params = {} if density is None else {"density": density}
    if name.startswith("dare"):
        params["rng"] = "peft"
    if sign:
        params["majority_sign_method"] = sign
    ours = get_merge_method(name)(d, w, generator=_g(9), **params)
    ref = _peft(name, d, w, density, 9, sign)
    assert torch.allclose(ours, ref, rtol=1e-6, atol=1e-6)
    assert torch.equal(ours != 0, ref != 0)


def test_lambda_scales_peft_result():
    d = torch.randn(3, 20, 10, generator=_g(3))
    w = torch.ones(3)
    ours = get_merge_method("ties")(d, w, density=0.5, **{"lambda": 0.6})
    assert torch.allclose(ours, 0.6 * _peft("ties", d, w, 0.5, 0, "total"))


def test_ties_hand_worked():
    # three experts, four coordinates, density 0.5 -> keep 2 per expert
    d = torch.tensor([[4.0, -1.0, 0.5, -3.0], [-2.0, 3.0, 1.0, -0.1], [1.0, 0.2, -5.0, 2.0]])
    # trimmed: [4,0,0,-3], [-2,3,0,0], [0,0,-5,2]
    # sums:     2, 3, -5, -1  -> signs + + - -
    # agreeing: c0 {4}, c1 {3}, c2 {-5}, c3 {-3}
    w = torch.tensor([1.0, 2.0, 1.0])
    out = get_merge_method("ties")(d, w, density=0.5)
    assert torch.equal(out, torch.tensor([4.0, 6.0, -5.0, -3.0]))
    # frequency: signs count +1,-1 / -1,+1 / -1,+1 / ... c0: (+,-,0)->0 -> + ; c1: (0,+,0) + ; c2 (0,0,-) - ; c3 (-,0,+) 0 -> +
    out = get_merge_method("ties")(d, w, density=0.5, majority_sign_method="frequency")
    assert torch.equal(out, torch.tensor([4.0, 6.0, -5.0, 2.0]))


def test_emr_hand_worked():
    d = torch.tensor([[2.0, -1.0, 0.0], [-1.0, -3.0, 1.0]])
    # sum: 1, -4, 1 -> signs + - + ; unified = [2, -3, 1]
    out = get_merge_method("emr")(d)
    assert isinstance(out, PerTaskMerge)
    assert torch.equal(out.unified, torch.tensor([2.0, -3.0, 1.0]))
    assert torch.equal(out.masks, torch.tensor([[True, True, False], [False, True, True]]))
    # rescalers: sum|tau_i| / sum|mask_i * unified| = 3/5, 5/4
    assert torch.allclose(out.rescalers, torch.tensor([3 / 5, 5 / 4]))
    assert torch.allclose(out.task_delta(1), torch.tensor([0.0, -3.75, 1.25]))
    assert torch.equal(out.merged(), out.unified)


def test_fisher_hand_worked():
    d = torch.tensor([[1.0, 2.0], [3.0, -2.0]])
    f = torch.tensor([[3.0, 0.0], [1.0, 0.0]])
    w = torch.tensor([1.0, 2.0])
    out = get_merge_method("fisher")(d, w, stats={"fisher": f}, epsilon=0.0)
    # c0: (1*3*1 + 2*1*3) / (3 + 2) = 9/5 ; c1: no information -> 0
    assert torch.allclose(out, torch.tensor([9 / 5, 0.0]))
    out = get_merge_method("fisher")(d, w, stats={"fisher": f}, epsilon=1.0)
    # c1: (1*1*2 + 2*1*-2) / (1 + 2) = -2/3 (floor -> weighted average)
    assert torch.allclose(out, torch.tensor([(4 + 2 * 2 * 3) / (4 + 4), -2 / 3]))


def test_fisher_without_stats_is_config_error():
    with pytest.raises(ConfigError, match="fisher"):
        get_merge_method("fisher")(torch.randn(2, 3))


def _linear_experts(n=3, d_in=6, d_out=4, samples=30):
    torch.manual_seed(0)  # nn.Linear init only; data below use explicit generators
    base = torch.nn.Linear(d_in, d_out)
    experts = []
    for i in range(n):
        lin = torch.nn.Linear(d_in, d_out)
        with torch.no_grad():
            lin.weight.copy_(base.weight + 0.5 * torch.randn(d_out, d_in, generator=_g(10 + i)))
        experts.append(lin)
    xs = [torch.randn(samples, d_in, generator=_g(20 + i)) * (1 + i) for i in range(n)]
    return base, experts, xs


def test_regmean_equals_least_squares_on_union_of_inputs():
    base, experts, xs = _linear_experts()
    tau = torch.stack([e.weight.detach() - base.weight.detach() for e in experts])
    gram = torch.stack([x.T @ x for x in xs])
    merged = base.weight.detach() + get_merge_method("regmean")(tau, None, stats={"gram": gram}, alpha=1.0)
    # argmin_W sum_i ||X_i W^T - X_i W_i^T||^2 (bias-free outputs of each expert on its own inputs)
    x_all = torch.cat(xs)
    y_all = torch.cat([x @ e.weight.detach().T for x, e in zip(xs, experts)])
    w_ls = torch.linalg.lstsq(x_all.double(), y_all.double()).solution.T
    assert torch.allclose(merged.double(), w_ls, atol=1e-4)
    # and the merged layer reproduces the experts' outputs better than plain averaging
    avg = base.weight.detach() + tau.mean(0)
    err = lambda w: sum(((x @ w.T - x @ e.weight.detach().T) ** 2).sum() for x, e in zip(xs, experts))
    assert err(merged) < err(avg)


def test_regmean_alpha_weights_and_layouts():
    base, experts, xs = _linear_experts()
    tau = torch.stack([e.weight.detach() - base.weight.detach() for e in experts]).double()
    gram = torch.stack([x.T @ x for x in xs]).double()
    w = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    alpha = 0.7
    g2 = alpha * gram + (1 - alpha) * torch.diag_embed(torch.diagonal(gram, dim1=1, dim2=2))
    lhs = sum(w[i] * g2[i] for i in range(3))
    rhs = sum(w[i] * tau[i] @ g2[i] for i in range(3))
    expect = rhs @ torch.linalg.inv(lhs)
    got = get_merge_method("regmean")(tau, w, stats={"gram": gram}, alpha=alpha)
    assert torch.allclose(got, expect, atol=1e-10)
    # GPT-2 Conv1D layout ([in, out]) gives the transposed result
    got_t = get_merge_method("regmean")(tau.transpose(1, 2), w, stats={"gram": gram, "fan_in_fan_out": True}, alpha=alpha)
    assert torch.allclose(got_t, expect.T, atol=1e-10)
    # tensors without a Gram matrix (biases): weighted mean
    b = torch.randn(3, 4, dtype=torch.float64, generator=_g(1))
    assert torch.allclose(get_merge_method("regmean")(b, w, stats={}), (w[:, None] * b).sum(0) / w.sum())
    with pytest.raises(ConfigError, match="gram"):
        get_merge_method("regmean")(tau, w, stats={"gram": gram[:, :3, :3]})


def test_regmean_via_stream_needs_stats():
    with pytest.raises(ConfigError, match="regmean"):
        merge_task_vectors("regmean", [("l.weight", torch.randn(2, 3, 3))])


def _lora(rank, d_out=8, d_in=6, scale=2.0, seed=0, fan=False):
    g = _g(seed)
    return LoraModule(A=torch.randn(rank, d_in, generator=g), B=torch.randn(d_out, rank, generator=g), scale=scale, fan_in_fan_out=fan)


@pytest.mark.parametrize("method,params", [("task_arithmetic", {"lambda": 0.7}), ("weight_average", {})])
def test_lora_concat_is_exact_with_different_ranks(method, params):
    experts = [{"m.weight": _lora(r, scale=s, seed=i)} for i, (r, s) in enumerate([(2, 2.0), (4, 0.5), (3, 1.0)])]
    w = [0.5, 1.0, 2.0] if method == "weight_average" else [0.5, -1.0, 2.0]  # importances are >= 0
    out = merge_lora(method, experts, w, params, space="concat")["m.weight"]
    assert out.rank == 9 and out.scale == 1.0
    c = torch.tensor(w) * params.get("lambda", 1.0)
    if method == "weight_average":
        c = torch.tensor(w) / sum(w)
    expect = sum(c[i] * e["m.weight"].scale * e["m.weight"].B @ e["m.weight"].A for i, e in enumerate(experts))
    assert torch.allclose(out.B @ out.A, expect, atol=1e-5)
    # and equals the delta-space merge
    delta = merge_lora(method, experts, w, params, space="delta")["m.weight"]
    assert torch.allclose(out.delta(), delta, atol=1e-5)


def test_lora_concat_rejects_nonlinear_methods():
    experts = [{"m.weight": _lora(2, seed=i)} for i in range(2)]
    for method in ("ties", "dare_linear", "emr"):
        with pytest.raises(ConfigError, match="concat|delta"):
            merge_lora(method, experts, None, None, space="concat")


def test_lora_ab_space_semantics():
    experts = [{"m.weight": _lora(3, scale=s, seed=i)} for i, s in enumerate([2.0, 0.5])]
    w = [0.6, 0.4]
    out = merge_lora("task_arithmetic", experts, w, None, space="ab")["m.weight"]
    a = 0.6 * experts[0]["m.weight"].A + 0.4 * experts[1]["m.weight"].A
    b = 0.6 * 2.0 * experts[0]["m.weight"].B + 0.4 * 0.5 * experts[1]["m.weight"].B
    assert torch.allclose(out.A, a) and torch.allclose(out.B, b) and out.scale == 1.0
    # cross terms: the ab merge is not the weighted sum of the deltas
    delta = merge_lora("task_arithmetic", experts, w, None, space="delta")["m.weight"]
    assert not torch.allclose(out.delta(), delta, atol=1e-3)
    with pytest.raises(ConfigError, match="equal LoRA ranks"):
        merge_lora("task_arithmetic", [{"m.weight": _lora(2)}, {"m.weight": _lora(3, seed=1)}], None, None, space="ab")


def test_lora_delta_space_with_rank_and_fan_in_fan_out():
    experts = [{"c.weight": _lora(2, seed=i, fan=True)} for i in range(2)]
    delta = merge_lora("task_arithmetic", experts, None, None, space="delta")["c.weight"]
    assert delta.shape == (6, 8)  # Conv1D layout: delta is (B @ A).T
    low = merge_lora("task_arithmetic", experts, None, None, space="delta", rank=4)["c.weight"]
    assert low.fan_in_fan_out and low.rank == 4
    assert torch.allclose(low.delta(), delta, atol=1e-4)  # rank 4 >= true rank 4: exact
    low1 = merge_lora("task_arithmetic", experts, None, None, space="delta", rank=1)["c.weight"]
    s = torch.linalg.svdvals(delta)
    assert torch.allclose(torch.linalg.matrix_norm(low1.delta() - delta), s[1:].norm(), rtol=1e-4)


@pytest.mark.parametrize("dist", ["normal", "sparse", "duplicates", "tiny", "constant"])
def test_exact_kth_largest_against_sort(dist):
    from evomerge.merging.methods._select import kth_largest_bracket, kth_largest_numpy, topk_mask

    g = _g(0)
    n = 140_000  # above the size where the sampled bracket is used
    a = {
        "normal": lambda: torch.randn(n, generator=g).abs(),
        "sparse": lambda: torch.randn(n, generator=g).abs() * (torch.rand(n, generator=g) < 0.1),
        "duplicates": lambda: torch.randint(0, 50, (n,), generator=g).float(),
        "tiny": lambda: torch.randn(n, generator=g).abs() * 1e-30,
        "constant": lambda: torch.ones(n),
    }[dist]()
    ordered = torch.sort(a, descending=True).values
    for k in (1, 100, n // 5, n - 1, n):
        for select in (kth_largest_numpy, kth_largest_bracket):  # CPU path and the any-device path
            v, n_ge = select(a, k)
            assert v == ordered[k - 1] and n_ge == int((a >= ordered[k - 1]).sum())
        assert int(topk_mask(a, k).sum()) == k
