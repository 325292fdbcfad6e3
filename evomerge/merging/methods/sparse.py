"""Sparsifying merges: TIES, DARE (linear and TIES), magnitude pruning, Model Breadcrumbs,
TALL-mask consensus. Semantics match ``peft.utils.merge_utils`` where peft has the method
(``lambda`` = 1 reproduces peft bit for bit on CPU; for DARE with ``rng="peft"``, and for TIES /
DARE-TIES with ``disjoint="count"``, the defaults)."""

from __future__ import annotations

import torch

from evomerge.errors import ConfigError
from evomerge.merging.methods import _steps as st
from evomerge.merging.methods._params import DENSITY, DISJOINT, LAMBDA, RNG, SIGN
from evomerge.merging.registry import Param, register_merge


@register_merge("ties", params=(DENSITY, LAMBDA, SIGN, DISJOINT))
def ties(deltas, weights, *, generator=None, stats=None, density, lam, majority_sign_method, disjoint):
    """TIES: trim to the top `density` by magnitude, elect signs, disjoint weighted mean."""
    st.check_deltas("ties", deltas)
    w = st.prepare_weights("ties", weights, deltas)
    rows = deltas.reshape(deltas.shape[0], -1)
    out = st.sparse_sign_merge(rows, w, st.magnitude_keep(rows, density), majority_sign_method, disjoint)
    return st.finish(out, lam, deltas)


@register_merge("dare_ties", params=(DENSITY, LAMBDA, SIGN, DISJOINT, RNG), random=True)
def dare_ties(deltas, weights, *, generator=None, stats=None, density, lam, majority_sign_method, disjoint, rng):
    """DARE drop (keep prob `density`, survivors / density), then TIES sign election and disjoint mean."""
    st.check_deltas("dare_ties", deltas)
    w = st.prepare_weights("dare_ties", weights, deltas)
    g = st.default_generator(generator, deltas.device)
    rows = deltas.reshape(deltas.shape[0], -1)
    keep = st.dare_keep(rows, density, g, rng)
    out = st.sparse_sign_merge(rows, w, keep, majority_sign_method, disjoint, exact=rng == "peft")
    return st.finish(out, lam, deltas)


@register_merge("dare_linear", params=(DENSITY, LAMBDA, RNG), random=True)
def dare_linear(deltas, weights, *, generator=None, stats=None, density, lam, rng):
    """DARE drop (keep prob `density`, survivors / density), then `lambda * sum_i w_i tau_i`."""
    st.check_deltas("dare_linear", deltas)
    w = st.prepare_weights("dare_linear", weights, deltas)
    g = st.default_generator(generator, deltas.device)
    rows = deltas.reshape(deltas.shape[0], -1)
    out = st.sparse_sign_merge(rows, w, st.dare_keep(rows, density, g, rng), None, exact=rng == "peft")
    return st.finish(out, lam, deltas)


@register_merge("magnitude_prune", params=(DENSITY, LAMBDA))
def magnitude_prune(deltas, weights, *, generator=None, stats=None, density, lam):
    """Keep the top `density` of each task vector by magnitude, then `lambda * sum_i w_i tau_i`."""
    st.check_deltas("magnitude_prune", deltas)
    w = st.prepare_weights("magnitude_prune", weights, deltas)
    rows = deltas.reshape(deltas.shape[0], -1)
    out = st.sparse_sign_merge(rows, w, st.magnitude_keep(rows, density), None)
    return st.finish(out, lam, deltas)


_MT_DENSITY = Param(
    "density", float, 0.7, low=0.0, high=1.0, low_open=True,
    help="fraction of each task vector kept by magnitude", tune_low=0.3, tune_high=1.0,
)
_MT_RESCALE = Param("rescale", bool, True, help="divide the result by `density` (the paper code's rescaler)")


@register_merge("magnitude_ties", params=(_MT_DENSITY, _MT_RESCALE, LAMBDA, SIGN))
def magnitude_ties(deltas, weights, *, generator=None, stats=None, density, rescale, lam, majority_sign_method):
    """The GENOME / "more experts" paper code's merge: keep the top `density` of each task vector
    by magnitude, divide by `density` (`rescale`), elect signs (TIES), weighted sum (not mean)
    over the agreeing experts."""
    st.check_deltas("magnitude_ties", deltas)
    w = st.prepare_weights("magnitude_ties", weights, deltas)
    rows = deltas.reshape(deltas.shape[0], -1)
    out = st.sparse_sign_merge(rows, w, st.magnitude_keep(rows, density), majority_sign_method, "sum")
    if rescale and density != 1.0:
        out = out / density
    return st.finish(out, lam, deltas)


_BC_DENSITY = Param(
    "density", float, 0.9, low=0.0, high=1.0, low_open=True,
    help="fraction kept after the largest `gamma` fraction", tune_low=0.5, tune_high=1.0,
)
_BC_GAMMA = Param(
    "gamma", float, 0.01, low=0.0, high=1.0, high_open=True,
    help="fraction of largest magnitudes dropped", tune_low=0.0, tune_high=0.1,
)


@register_merge("breadcrumbs", params=(_BC_DENSITY, _BC_GAMMA, LAMBDA))
def breadcrumbs(deltas, weights, *, generator=None, stats=None, density, gamma, lam):
    """Model Breadcrumbs: per task vector drop the int(gamma N) largest magnitudes, keep the next
    int(density N) (mergekit's count), then `lambda * sum_i w_i tau_i`."""
    st.check_deltas("breadcrumbs", deltas)
    if density + gamma > 1.0 + 1e-12:
        raise ConfigError(
            f"merge method `breadcrumbs`: `density` + `gamma` must be <= 1. Got {density} + {gamma} instead."
        )
    w = st.prepare_weights("breadcrumbs", weights, deltas)
    work = st.band_rows_(st.working_copy(deltas), density, gamma)
    return st.finish(st.weighted_sum_(work, w), lam, deltas)


_TALL_LAMBDA = Param(
    "tall_lambda", float, 0.4, low=0.0, high=10.0,
    help="TALL mask threshold: keep |tau_i| >= tall_lambda * |tau_sum - tau_i|", tune_low=0.1, tune_high=1.0,
)
_MIN_AGREE = Param("k", int, 2, low=1, help="keep coordinates selected by at least k task masks")


@register_merge("consensus", params=(_TALL_LAMBDA, _MIN_AGREE, LAMBDA))
def consensus(deltas, weights, *, generator=None, stats=None, tall_lambda, k, lam):
    """Consensus merging: task arithmetic restricted to coordinates at least `k` TALL masks select."""
    st.check_deltas("consensus", deltas)
    n = deltas.shape[0]
    if k > n:  # no coordinate could gather k votes: the merge would be all zero (the base model)
        raise ConfigError(
            f"merge method `consensus`: `k` must be <= the number of experts ({n}); "
            f"a coordinate needs k of the {n} task masks. Got {k} instead."
        )
    w = st.prepare_weights("consensus", weights, deltas)
    work = st.working_copy(deltas).mul_(w.view(-1, 1))
    total = work.sum(dim=0)
    votes = torch.zeros_like(total)
    for row in work:
        votes += row.abs() >= tall_lambda * (total - row).abs()
    return st.finish(total.mul_(votes >= k), lam, deltas)
