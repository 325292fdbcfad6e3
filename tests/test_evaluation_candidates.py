"""``evaluation.candidates.to_deltas``: the finiteness check names the offending key with one
check per candidate, and LoRA factors bound for another device travel as one buffer whose
views are the factors, value for value."""

from __future__ import annotations

import pytest
import torch

from evomerge.errors import ExpertLoadError
from evomerge.evaluation.candidates import LowRank, gather_factors, to_deltas
from evomerge.experts.types import LoraModule


def _params():
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(6, 4, generator=g), "b.weight": torch.randn(3, 6, generator=g),
            "c.weight": torch.randn(5, 5, generator=g)}


def _lora(out_f, in_f, r=2, seed=1, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    return LoraModule(torch.randn(r, in_f, generator=g), torch.randn(out_f, r, generator=g), scale)


@pytest.mark.parametrize("bad", ["a.weight", "b.weight", "c.weight"])
@pytest.mark.parametrize("where", ["A", "B", "dense"])
def test_non_finite_values_name_their_key(bad, where):
    p = _params()
    cand = {"a.weight": _lora(6, 4), "b.weight": _lora(3, 6, seed=2), "c.weight": torch.zeros(5, 5)}
    if where == "dense" or bad == "c.weight":
        cand[bad] = torch.zeros(p[bad].shape)
        cand[bad][0, 1] = float("inf")
    else:
        m = cand[bad]
        getattr(m, where)[0, 0] = float("nan")
    with pytest.raises(ExpertLoadError, match=rf"cand: `{bad}` contains NaN or infinite values"):
        to_deltas(cand, p, "cand")
    cand[bad] = torch.zeros(p[bad].shape)  # the same candidate made finite passes
    assert set(to_deltas(cand, p, "cand")) == set(p)


def test_lora_factors_cast_and_scaled_as_before():
    p = {k: v.double() for k, v in _params().items()}
    m = _lora(6, 4, scale=0.25)
    d = to_deltas({"a.weight": m}, p)["a.weight"]
    assert isinstance(d, LowRank) and d.A.dtype == d.B.dtype == torch.float64
    assert torch.equal(d.A, m.A.double()) and torch.equal(d.B, (m.B * 0.25).double())
    assert torch.allclose(d.dense(), 0.25 * (m.B @ m.A).double())


def test_gather_factors_is_one_buffer_of_the_same_values():
    fs = {"x": LowRank(torch.randn(2, 7), torch.randn(5, 2)),
          "y": LowRank(torch.randn(3, 4), torch.randn(9, 3), transposed=True)}
    got = gather_factors(fs, torch.device("cpu"))
    assert list(got) == list(fs)
    ptrs = set()
    for k, f in fs.items():
        g = got[k]
        assert g.transposed == f.transposed and g.A.is_contiguous() and g.B.is_contiguous()
        assert torch.equal(g.A, f.A) and torch.equal(g.B, f.B) and torch.equal(g.dense(), f.dense())
        ptrs |= {g.A.untyped_storage().data_ptr(), g.B.untyped_storage().data_ptr()}
    assert len(ptrs) == 1  # views of one buffer: one copy to a device
