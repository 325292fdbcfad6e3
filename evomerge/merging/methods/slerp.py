"""Spherical interpolation of two task vectors."""

from __future__ import annotations

import math

import torch

from evomerge.errors import ConfigError
from evomerge.merging.methods import _steps as st
from evomerge.merging.registry import Param, register_merge

_T = Param("t", float, 0.5, low=0.0, high=1.0, help="interpolation position (0 = first expert, 1 = second)")


@register_merge("slerp", params=(_T,))
def slerp(deltas, weights, *, generator=None, stats=None, t):
    """SLERP of exactly two (weighted) task vectors; linear interpolation when they are (anti)parallel or zero."""
    st.check_deltas("slerp", deltas)
    if deltas.shape[0] != 2:
        raise ConfigError(f"merge method `slerp` merges exactly 2 experts. Got {deltas.shape[0]} instead.")
    w = st.prepare_weights("slerp", weights, deltas)
    a, b = st.working_copy(deltas).mul_(w.view(-1, 1)).to(torch.float64)
    na, nb = a.norm(), b.norm()
    lerp = (1 - t) * a + t * b
    if na == 0 or nb == 0:
        return st.finish(lerp, 1.0, deltas)
    cos = float((a @ b) / (na * nb))
    theta = math.acos(max(-1.0, min(1.0, cos)))
    if math.sin(theta) < 1e-6:
        return st.finish(lerp, 1.0, deltas)
    out = (math.sin((1 - t) * theta) * a + math.sin(t * theta) * b) / math.sin(theta)
    return st.finish(out, 1.0, deltas)
