"""The `disjoint` option of TIES / DARE-TIES (hand-worked tensors, float64 references) and the
`rng="fast"` DARE mask (its documented stream re-derived independently, Monte-Carlo keep
rates, independence, block-size invariance)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evomerge.merging import get_merge_method
from evomerge.merging.methods import _select
from evomerge.merging.methods._dare import FastDareMask

M64 = (1 << 64) - 1


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _disjoint_ref(x: torch.Tensor, w: torch.Tensor, mode: str, sign_method: str = "total") -> torch.Tensor:
    """Float64 reference: elect the sign on the unweighted rows, then the disjoint mean."""
    x, w = x.double(), w.double()
    score = x.sum(0) if sign_method == "total" else torch.sign(x).sum(0)
    s = torch.where(score >= 0, 1.0, -1.0).double()
    agree = (x * s > 0).double()
    num = (w[:, None] * x * agree).sum(0)
    if mode == "count":
        return num / agree.sum(0).clamp(min=1)
    den = (w[:, None] * agree).sum(0)
    return torch.where(den == 0, torch.zeros_like(num), num / torch.where(den == 0, torch.ones_like(den), den))


# ------------------------------------------------------------------ disjoint="weighted"
def test_weighted_disjoint_hand_worked():
    d = torch.tensor([[2.0, -1.0, 3.0, 0.0], [4.0, 1.0, -1.0, 0.0], [-1.0, 2.0, 0.0, 0.0]])
    w = torch.tensor([1.0, 3.0, 0.5])
    # signs (sums 5, 2, 2, 0): + + + + ; agreeing: c0 {e0: 2, e1: 4}, c1 {e1: 1, e2: 2}, c2 {e0: 3}, c3 none
    # weighted: (2 + 12) / 4, (3 + 1) / 3.5, 3 / 1, 0 ; count: 14 / 2, 4 / 2, 3 / 1, 0
    want_w = torch.tensor([3.5, 4.0 / 3.5, 3.0, 0.0])
    want_c = torch.tensor([7.0, 2.0, 3.0, 0.0])
    for name, extra in (("ties", {}), ("dare_ties", {"rng": "fast"}), ("dare_ties", {"rng": "peft"})):
        m = get_merge_method(name)
        got_w = m(d, w, generator=_g(0), density=1.0, disjoint="weighted", **extra)
        got_c = m(d, w, generator=_g(0), density=1.0, **extra)  # default: count (peft)
        torch.testing.assert_close(got_w, want_w)
        torch.testing.assert_close(got_c, want_c)
    # frequency election: c0 (+,+,-) -> + as above; c1 (-,+,+) -> +; c2 (+,-,0) tie -> +
    got = get_merge_method("ties")(d, w, density=1.0, disjoint="weighted", majority_sign_method="frequency")
    torch.testing.assert_close(got, want_w)


def test_weighted_disjoint_with_trimming_hand_worked():
    d = torch.tensor([[4.0, -1.0, 0.5, -3.0], [-2.0, 3.0, 1.0, -0.1], [1.0, 0.2, -5.0, -2.0]])
    # density 0.5 keeps 2 per expert: [4,0,0,-3], [-2,3,0,0], [0,0,-5,-2]; signs + + - -
    # agreeing: c0 {e0: 4}, c1 {e1: 3}, c2 {e2: -5}, c3 {e0: -3, e2: -2}
    w = torch.tensor([1.0, 2.0, 3.0])
    got = get_merge_method("ties")(d, w, density=0.5, disjoint="weighted")
    torch.testing.assert_close(got, torch.tensor([4.0, 3.0, -5.0, (-3.0 - 6.0) / 4.0]))
    got = get_merge_method("ties")(d, w, density=0.5)
    torch.testing.assert_close(got, torch.tensor([4.0, 6.0, -15.0, (-3.0 - 6.0) / 2.0]))


def test_weighted_disjoint_zero_denominator_gives_zero():
    d = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    # c0: both agree (+) and the weights cancel: 0 by definition; c1: only e0 agrees -> 2
    got = get_merge_method("ties")(d, torch.tensor([1.0, -1.0]), density=1.0, disjoint="weighted")
    torch.testing.assert_close(got, torch.tensor([0.0, 2.0]))
    got = get_merge_method("ties")(d, torch.zeros(2), density=1.0, disjoint="weighted")
    assert torch.count_nonzero(got) == 0


@pytest.mark.parametrize("name", ["ties", "dare_ties"])
@pytest.mark.parametrize("weights", [[0.5, 0.5], [0.9, 0.1], [0.2, 0.3, 0.5], [3.0, 0.01, 7.0]])
def test_identical_parents_return_the_parent(name, weights):
    x = torch.randn(37, 29, generator=_g(4))
    n = len(weights)
    stacked = torch.stack([x] * n)
    w = torch.tensor(weights)
    m = get_merge_method(name)
    got = m(stacked, w, generator=_g(1), density=1.0, disjoint="weighted")
    torch.testing.assert_close(got, x)
    # the peft convention returns (sum of weights / n) * x instead
    cnt = m(stacked, w, generator=_g(1), density=1.0)
    torch.testing.assert_close(cnt, x * w.sum() / n)
    if name == "ties":  # identical trims: the trimmed parent
        trimmed = get_merge_method("magnitude_prune")(x[None], None, density=0.3)
        torch.testing.assert_close(m(stacked, w, density=0.3, disjoint="weighted"), trimmed)
    else:  # independent drops: each coordinate is x / density where any copy survives, else 0
        for rng in ("fast", "peft"):
            out = m(stacked, w, generator=_g(2), density=0.4, disjoint="weighted", rng=rng)
            kept = out != 0
            torch.testing.assert_close(out[kept], x[kept] / 0.4)
            assert 0.5 < kept.float().mean() < 1.0  # 1 - 0.6^n of the coordinates


def test_weighted_disjoint_is_scale_invariant_and_matches_reference():
    d = torch.randn(5, 40, 30, generator=_g(7))
    w = torch.tensor([0.4, 1.0, 0.8, 0.3, 1.5])
    for sign in ("total", "frequency"):
        a = get_merge_method("ties")(d, w, density=1.0, disjoint="weighted", majority_sign_method=sign)
        b = get_merge_method("ties")(d, 10 * w, density=1.0, disjoint="weighted", majority_sign_method=sign)
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a.double(), _disjoint_ref(d.reshape(5, -1), w, "weighted", sign).view(40, 30))


# ------------------------------------------------------------------ rng="fast" DARE mask
def _splitmix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def _spec_mask(seed: int, n: int, numel: int, density: float) -> np.ndarray:
    """The documented fast mask, re-derived with Python ints: keep iff (b << 24 | r) < T."""
    t = min(max(round(density * 2**32), 1), 2**32 - 1)
    groups = (numel + 7) // 8
    words = np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(0,))).random_raw(groups * n)
    key = int(np.random.SeedSequence(seed, spawn_key=(1,)).generate_state(1, np.uint64)[0])
    keep = np.zeros((n, numel), dtype=bool)
    for i in range(n):
        for j in range(numel):
            b = (int(words[(j // 8) * n + i]) >> (8 * (j % 8))) & 0xFF
            r = _splitmix64((key + (i * numel + j + 1) * 0x9E3779B97F4A7C15) & M64) >> 40
            keep[i, j] = ((b << 24) | r) < t
    return keep


@pytest.mark.parametrize("density", [0.3, 0.5 + 2**-9, 0.999])
def test_fast_mask_follows_its_documented_definition(density):
    n, numel, seed = 3, 700, 12345
    want = _spec_mask(seed, n, numel, density)
    # end to end: rows 1, 2, 4 -> density * dare_linear = sum_i 2^i keep_i, decoded bit by bit
    d = torch.tensor([1.0, 2.0, 4.0])[:, None].expand(n, numel).contiguous()
    out = get_merge_method("dare_linear")(d, None, generator=_g(seed), density=density)
    code = torch.round(out.double() * density).to(torch.int64).numpy()
    got = np.stack([(code >> i) & 1 for i in range(n)]).astype(bool)
    assert np.array_equal(got, want)


def test_fast_mask_does_not_depend_on_blocks_or_dtype():
    n, numel = 4, 5003
    ref = FastDareMask(n, numel, 0.25, 9).block(0, numel).numpy()
    for step in (8, 64, 1000, 4096):
        m = FastDareMask(n, numel, 0.25, 9)
        starts = list(range(0, numel, step))
        parts = {c0: m.block(c0, min(numel, c0 + step)).numpy() for c0 in starts[::-1]}  # out of order too
        assert np.array_equal(np.concatenate([parts[c0] for c0 in starts], axis=1), ref)
    d = torch.randn(n, 3, numel, generator=_g(0))
    a = get_merge_method("dare_ties")(d, None, generator=_g(3), density=0.25)
    b = get_merge_method("dare_ties")(d.to(torch.bfloat16), None, generator=_g(3), density=0.25)
    assert torch.equal(a != 0, b.float() != 0)


def test_fast_mask_keep_rate_independence_and_exact_tie_resolution():
    n, numel = 4, 1 << 20
    density = 0.5 + 2**-9  # top byte 128 is a tie, resolved with probability exactly 1/2
    m = FastDareMask(n, numel, density, 2024)
    b = m.top_bytes(0, numel)
    m = FastDareMask(n, numel, density, 2024)
    keep = m.block(0, numel).numpy().astype(bool)
    total = keep.size
    sd = (density * (1 - density) / total) ** 0.5
    assert abs(keep.mean() - density) < 4 * sd  # 0.5 or 129/256 would be ~8 sd away
    tie = b == 128
    assert np.array_equal(keep[~tie], b[~tie] < 128)
    assert abs(keep[tie].mean() - 0.5) < 4 * (0.25 / tie.sum()) ** 0.5
    # pairs: next column (same word), column + 8 (next word of the row), next row
    p2, sd2 = density**2, (density**2 * (1 - density**2) / total) ** 0.5
    for a, c in ((keep[:, :-1], keep[:, 1:]), (keep[:, :-8], keep[:, 8:]), (keep[:-1], keep[1:])):
        assert abs((a & c).mean() - p2) < 5 * sd2


def test_fast_dare_reproducible_by_seed_and_independent_of_generator_state():
    d = torch.randn(3, 50, 20, generator=_g(1))
    m = get_merge_method("dare_ties")
    g = _g(8)
    a = m(d, None, generator=g, density=0.3)
    torch.rand(10, generator=g)  # the fast mask depends on the seed only
    assert torch.equal(a, m(d, None, generator=g, density=0.3))
    assert not torch.equal(a, m(d, None, generator=_g(9), density=0.3))


@pytest.mark.parametrize("disjoint", ["count", "weighted"])
@pytest.mark.parametrize("sign", ["total", "frequency"])
def test_fast_dare_arithmetic_matches_float64_reference(disjoint, sign):
    n, shape, density = 5, (64, 33), 0.35
    d = torch.randn((n, *shape), generator=_g(11))
    w = torch.tensor([0.4, 1.0, -0.8, 0.3, 1.5])
    numel = d[0].numel()
    keep = torch.from_numpy(FastDareMask(n, numel, density, 77).block(0, numel).numpy())
    x = d.reshape(n, -1) * keep / density
    got = get_merge_method("dare_ties")(d, w, generator=_g(77), density=density, majority_sign_method=sign,
                                        disjoint=disjoint)
    torch.testing.assert_close(got.double(), _disjoint_ref(x, w, disjoint, sign).view(shape), rtol=1e-5, atol=1e-5)
    lin = get_merge_method("dare_linear")(d, w, generator=_g(77), density=density)
    torch.testing.assert_close(lin.double(), (w.double()[:, None] * x.double()).sum(0).view(shape), rtol=1e-5, atol=1e-5)


def test_peft_rng_with_weighted_disjoint_matches_reference():
    n, density = 4, 0.4
    d = torch.randn(n, 30, 20, generator=_g(5))
    w = torch.tensor([0.5, 1.5, 1.0, 2.0])
    with torch.random.fork_rng(devices=[]):  # peft's draw: torch.bernoulli after manual_seed
        torch.manual_seed(6)
        keep = torch.stack([torch.bernoulli(torch.full_like(t, density)) for t in d])
    x = (d * keep / density).reshape(n, -1)
    got = get_merge_method("dare_ties")(d, w, generator=_g(6), density=density, rng="peft", disjoint="weighted")
    torch.testing.assert_close(got.double(), _disjoint_ref(x, w, "weighted").view(30, 20))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fast_mask_on_cuda():
    """With Triton (CUDA builds of torch ship it) the GPU kernels draw their own Philox mask
    (checked bit for bit in test_merging_kernels.py): reproducible on CUDA, same keep rate.
    Without it, CUDA runs the CPU's FastDareMask: the same mask as on the CPU."""
    from evomerge.merging.methods import _cuda

    d = torch.randn(3, 640, 480, generator=_g(0))
    m = get_merge_method("dare_ties")
    cpu = m(d, None, generator=_g(4), density=0.3)
    gpu = m(d.cuda(), None, generator=torch.Generator("cuda").manual_seed(4), density=0.3)
    if _cuda.usable(d.cuda().view(3, -1)):
        again = m(d.cuda(), None, generator=torch.Generator("cuda").manual_seed(4), density=0.3)
        assert torch.equal(gpu, again)
        assert abs((gpu != 0).float().mean().item() - (cpu != 0).float().mean().item()) < 0.01
    else:
        assert torch.equal(gpu.cpu() != 0, cpu != 0)
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("numel,k", [(300_000, 60_000), (300_000, 1), (300_000, 299_999), (1000, 200)])
def test_bracket_selection_is_the_exact_kth_largest(numel, k):
    """The sampled-bracket selection used off the CPU (and by the GPU kernels' fallback) against a sort."""
    a = torch.randn(numel, generator=_g(numel + k)).abs()
    a[::7] = a[3]  # many ties
    v, n_ge = _select.kth_largest_bracket(a, k)
    want = torch.sort(a, descending=True).values[k - 1]
    assert v == want and n_ge == int((a >= want).sum())
