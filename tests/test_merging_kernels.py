"""The fused GPU merge kernels (``evomerge.merging.methods._cuda``) against the torch path, peft's
merge utilities, exact selection by sorting, and an independent Philox4x32-10 written here.

Runs on CUDA, or on the CPU through Triton's interpreter where Triton is installed (CUDA builds
of torch bring it; CI's CPU build does not, so there the module is skipped).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if importlib.util.find_spec("triton") is None:  # not imported here: the fixture imports it under the interpreter
    pytest.skip("needs Triton", allow_module_level=True)

from evomerge.merging import get_merge_method  # noqa: E402
from evomerge.merging.methods import _cuda  # noqa: E402


@pytest.fixture(autouse=True)
def kernels():
    """Every test here runs the kernels: on CUDA, or on CPU tensors through Triton's interpreter."""
    with _cuda.interpreted(DEVICE == "cpu"):
        if DEVICE == "cpu" and not _cuda.interpreter_ready():
            pytest.skip("Triton was imported before its interpreter could be switched on")
        yield


def _rows(n=5, numel=150_000, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, numel, generator=g) * torch.linspace(0.5, 2.0, n).view(-1, 1)
    return x.to(dtype)


def _torch_path(fn):
    """Run ``fn`` (on CPU tensors) with the kernels switched off: the torch path."""
    with _cuda.interpreted(False):
        return fn()


# ------------------------------------------------------------------ Philox4x32-10, independently
_M0, _M1, _W0, _W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85


def philox4x32(c, k):
    """Philox4x32-10 (Salmon et al. 2011) on uint64 numpy arrays holding 32-bit words."""
    c0, c1, c2, c3 = (np.asarray(v, dtype=np.uint64) for v in c)
    k0, k1 = np.uint64(k[0]), np.uint64(k[1])
    mask = np.uint64(0xFFFFFFFF)
    for _ in range(10):
        p0, p1 = np.uint64(_M0) * c0, np.uint64(_M1) * c2
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ k0) & mask, p1 & mask, ((p0 >> np.uint64(32)) ^ c3 ^ k1) & mask, p0 & mask
        k0, k1 = (k0 + np.uint64(_W0)) & mask, (k1 + np.uint64(_W1)) & mask
    return c0, c1, c2, c3


def test_reference_philox_matches_the_published_known_answers():
    # Random123's kat_vectors for philox4x32_10
    got = philox4x32([0, 0, 0, 0], [0, 0])
    assert [int(v) for v in got] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    got = philox4x32([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2)
    assert [int(v) for v in got] == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    got = philox4x32([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0])
    assert [int(v) for v in got] == [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


# ------------------------------------------------------------------ exact selection
def test_row_thresholds_are_the_exact_kth_largest():
    x = _rows(6, 200_000)
    x[2, ::3] = 0.0  # many zeros
    x[3, 1000:5000] = 1.25  # a block of ties near the threshold
    x[4] = 0.5  # constant row: the sample bracket cannot separate anything (fallback)
    x[5, :199_000] = 0.0  # fewer nonzeros than k: the answer is 0
    k = int(0.2 * x.shape[1])
    thr, n_ge = _cuda.row_thresholds(x.to(DEVICE), k)
    a = x.abs()
    want = torch.sort(a, dim=1, descending=True).values[:, k - 1]
    torch.testing.assert_close(thr.cpu(), want)
    assert n_ge.cpu().tolist() == (a >= want.view(-1, 1)).sum(1).tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["ties", "magnitude_prune"])
def test_trim_merges_match_the_torch_path_and_peft(name, dtype):
    from peft.utils import merge_utils as mu

    d = _rows(5, 120_000, seed=1, dtype=dtype).view(5, 300, 400)
    w = torch.tensor([1.0, 0.5, 2.0, 0.8, 1.2])
    m = get_merge_method(name)
    kw = {"density": 0.3}
    got = m(d.to(DEVICE), w.to(DEVICE), **kw).cpu()
    ref = _torch_path(lambda: m(d, w, **kw))
    assert got.dtype == dtype and got.shape == (300, 400)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}
    torch.testing.assert_close(got, ref, **tol)
    if name == "ties" and dtype == torch.float32:
        peft = mu.ties(list(d), w, 0.3, "total")
        torch.testing.assert_close(get_merge_method("ties")(d.to(DEVICE), w.to(DEVICE), density=0.3,
                                                            majority_sign_method="total").cpu(), peft,
                                   rtol=1e-5, atol=1e-6)


def test_ties_at_the_threshold_keep_exactly_k_like_peft():
    """Duplicated magnitudes straddling the k-th largest: the kernel keeps the lowest-index ones,
    as the torch path's top-k mask does, so exactly k entries per row survive."""
    d = _rows(3, 90_000, seed=5)
    d[0, 10_000:30_000] = 1.5  # far more copies of one magnitude than fit under k
    d[1, 5_000:9_000] = -1.1
    d[1, 50_000:52_000] = 1.1
    d[2, :] = 0.0
    d[2, 100:40_000] = 0.75  # fewer nonzeros than k... and all tied
    w = torch.tensor([1.0, 0.5, 2.0])
    for name, kw in (("magnitude_prune", {}), ("ties", {"majority_sign_method": "frequency"})):
        m = get_merge_method(name)
        got = m(d.to(DEVICE), w.to(DEVICE), density=0.2, **kw).cpu()
        torch.testing.assert_close(got, _torch_path(lambda: m(d, w, density=0.2, **kw)), rtol=1e-5, atol=1e-6)
    one = get_merge_method("magnitude_prune")(d[:1].to(DEVICE), None, density=0.2).cpu()
    assert int((one != 0).sum()) == int(0.2 * 90_000)


@pytest.mark.parametrize("disjoint", ["count", "weighted"])
@pytest.mark.parametrize("sign", ["frequency", "total"])
def test_sign_election_options_match_the_torch_path(sign, disjoint):
    d = _rows(7, 60_000, seed=2)
    w = torch.tensor([1.0, -0.5, 2.0, 0.0, 1.2, 0.7, 0.3])
    m = get_merge_method("ties")
    kw = {"density": 0.5, "majority_sign_method": sign, "disjoint": disjoint}
    got = m(d.to(DEVICE), w.to(DEVICE), **kw).cpu()
    torch.testing.assert_close(got, _torch_path(lambda: m(d, w, **kw)), rtol=1e-5, atol=1e-6)


def _dare_reference(d, w, density, seed, sign_method=None):
    """DARE with the documented Philox mask, computed with numpy."""
    n, numel = d.shape
    cols = np.tile(np.arange(numel, dtype=np.uint64), (n, 1))
    rows = np.repeat(np.arange(n, dtype=np.uint64)[:, None], numel, axis=1)
    zero = np.zeros_like(cols)
    u = philox4x32([cols, rows, zero, zero], [seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF])[0]
    keep = torch.from_numpy(u < np.uint64(_cuda.keep_threshold(density)))
    x = d.double() * keep
    if sign_method is None:
        return (w.double().view(-1, 1) * x).sum(0) / density, keep
    score = torch.sign(x).sum(0) if sign_method == "frequency" else x.sum(0)
    sign = torch.where(score >= 0, 1.0, -1.0).double()
    agree = (x * sign) > 0
    num = (w.double().view(-1, 1) * x * agree).sum(0)
    return num / agree.sum(0).clamp(min=1) / density, keep


@pytest.mark.parametrize("name", ["dare_linear", "dare_ties"])
def test_dare_mask_is_the_documented_philox_draw(name):
    n, numel, density, seed = 4, 50_000, 0.3, 2**40 + 12345
    d = _rows(n, numel, seed=3)
    w = torch.tensor([1.0, 0.5, 2.0, 0.8])
    g = torch.Generator(DEVICE).manual_seed(seed)
    got = get_merge_method(name)(d.to(DEVICE), w.to(DEVICE), generator=g, density=density).cpu()
    want, keep = _dare_reference(d, w, density, seed, None if name == "dare_linear" else "total")
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    assert abs(keep.float().mean().item() - density) < 0.01
    again = get_merge_method(name)(d.to(DEVICE), w.to(DEVICE), generator=torch.Generator(DEVICE).manual_seed(seed),
                                   density=density).cpu()
    assert torch.equal(got, again)


def test_inputs_are_not_modified_and_odd_shapes_work():
    d = _rows(3, 4097 * 3, seed=4).view(3, 4097, 3).to(DEVICE)
    before = d.clone()
    for name in ("ties", "dare_ties", "dare_linear", "magnitude_prune"):
        out = get_merge_method(name)(d, None, generator=torch.Generator(DEVICE).manual_seed(0), density=0.2)
        assert out.shape == (4097, 3) and torch.isfinite(out).all()
    assert torch.equal(d, before)


def test_magnitude_ties_sum_over_agreeing_experts_matches_the_torch_path():
    """disjoint "sum" (no division): the paper code's merge in the kernel."""
    d = _rows(4, 40_000, seed=8)
    w = torch.tensor([1.0, 0.5, 2.0, 0.8])
    m = get_merge_method("magnitude_ties")
    got = m(d.to(DEVICE), w.to(DEVICE), density=0.7).cpu()
    torch.testing.assert_close(got, _torch_path(lambda: m(d, w, density=0.7)), rtol=1e-5, atol=1e-5)
