"""Geometry of an expert pool: PCA over experts, principal angles, cosine similarity."""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np
import torch

from evomerge.errors import ConfigError
from evomerge.experts.types import LoraModule
from evomerge.seeding import derive_rng
from evomerge.theory.moments import GramAccumulator, gram_of


def pca_cumulative_variance(x: torch.Tensor | GramAccumulator | np.ndarray) -> np.ndarray:
    """Cumulative explained-variance ratio of PCA with experts as samples.

    ``x`` is ``Tensor[n, d]`` (or a :class:`GramAccumulator` filled by streaming). The data are
    centred on the mean expert and the spectrum comes from the ``n x n`` Gram matrix, so huge
    ``d`` costs one pass. Returns ``n`` values; entry i is the share of variance explained by the
    first i+1 components (at most n-1 are non-zero after centring). All zeros if the experts
    are identical.
    """
    acc = x if isinstance(x, GramAccumulator) else gram_of(torch.as_tensor(x))
    eig = np.linalg.eigvalsh(acc.centered_gram())[::-1]
    eig = np.clip(eig, 0.0, None)
    total = eig.sum()
    if total <= 0:
        return np.zeros_like(eig)
    return np.minimum(np.cumsum(eig) / total, 1.0)


def threshold_reached_at(cum: np.ndarray, threshold: float = 0.95) -> int | None:
    """Smallest number of components whose cumulative ratio reaches ``threshold`` (within
    1e-12), or None where none does (a pool without variance included)."""
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"threshold must be in (0, 1], got {threshold}")
    cum = np.asarray(cum, dtype=np.float64)
    if cum.size == 0 or cum[-1] <= 0:
        return None
    hits = np.flatnonzero(cum >= threshold - 1e-12)
    return int(hits[0] + 1) if hits.size else None


def n_components_for(cum: np.ndarray, threshold: float = 0.95) -> int:
    """Smallest number of components whose cumulative ratio reaches ``threshold``
    (:func:`threshold_reached_at`); all of them where none does, 0 for a pool without variance."""
    at = threshold_reached_at(cum, threshold)
    if at is not None:
        return at
    cum = np.asarray(cum, dtype=np.float64)
    return 0 if cum.size == 0 or cum[-1] <= 0 else int(cum.size)


def pca_at_ceiling(n_components: int, n_experts: int) -> bool:
    """Whether a PCA count is the most n experts allow: centred on their mean they span at most
    n - 1 directions, so a count of n - 1 is what any pool without a low-rank structure gives."""
    return n_experts >= 2 and n_components >= n_experts - 1


def pca_ceiling_note(n_components: int, n_experts: int) -> str:
    """A few words saying the count is at the ceiling (empty when it is not)."""
    if not pca_at_ceiling(n_components, n_experts):
        return ""
    return f"the ceiling: {n_experts} centred experts span at most {n_experts - 1} direction{'' if n_experts == 2 else 's'}"


def _np64(m) -> np.ndarray:
    return m.detach().cpu().to(torch.float64).numpy() if isinstance(m, torch.Tensor) else np.asarray(m, dtype=np.float64)


def orthonormal_basis(m: torch.Tensor | np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    """Orthonormal basis (float64 numpy) of the column space of ``m``: QR, then an SVD of R to
    drop null directions, so rank-deficient inputs are handled. (numpy: torch's small QR is
    slow on CPU.)"""
    m = _np64(m)
    if m.ndim != 2:
        raise ConfigError(f"expected a matrix, got shape {m.shape}")
    q, r = np.linalg.qr(m)
    u, s, _ = np.linalg.svd(r)
    if s.size == 0 or s[0] <= 0:
        return q[:, :0]
    return q @ u[:, s > rtol * s[0]]


def principal_angles(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> np.ndarray:
    """Principal angles (degrees, ascending) between the column spaces of ``a`` and ``b``.

    0 means a shared direction, 90 orthogonal; there are ``min(rank a, rank b)`` angles.
    """
    if a.shape[0] != b.shape[0]:
        raise ConfigError(f"matrices live in different spaces: {a.shape[0]} vs {b.shape[0]} rows")
    return angles_between_bases(orthonormal_basis(a), orthonormal_basis(b))


def angles_between_bases(qa: np.ndarray, qb: np.ndarray) -> np.ndarray:
    """Principal angles (degrees, ascending) between two orthonormal bases (columns)."""
    if qa.shape[1] == 0 or qb.shape[1] == 0:
        return np.zeros(0)
    s = np.clip(np.linalg.svd(qa.T @ qb, compute_uv=False), 0.0, 1.0)
    return np.sort(np.degrees(np.arccos(s)))


def random_subspace_mean_angle(dim: int, p: int, q: int, *, seed: int, trials: int = 256) -> tuple[float, float]:
    """``(mean, standard error)``, in degrees, of the mean principal angle between independent
    uniformly random p- and q-dimensional subspaces of ``R^dim``: the level of "unrelated"
    subspaces of these shapes (Monte-Carlo over ``trials`` draws, seeded from ``seed`` and the
    shape). Not 90: random rank-32 subspaces of R^256 sit near 72 degrees, of R^512 near 78; two
    lines in the plane at 45, in R^3 at 1 rad; a subspace that fills the space at 0.

    By rotation invariance one subspace can be the span of the first q axes; the cosines of the
    angles are then the singular values of the first q rows of a Haar-random orthonormal basis
    (QR of a Gaussian matrix) of the other."""
    for name, v, low in (("dim", dim, 1), ("p", p, 1), ("q", q, 1), ("trials", trials, 2)):
        if isinstance(v, bool) or int(v) != v or v < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {v!r}")
    if p > dim or q > dim:
        raise ConfigError(f"subspaces of dimension {p} and {q} do not fit in R^{dim}")
    rng = derive_rng("random-subspace-angles", seed, dim, p, q)
    means = []
    batch = max(1, min(128, 2**22 // (dim * p)))  # draws per batch: <= 32 MB of Gaussians (a real model's
    # B of 14336 x 64 would take 0.9 GB per 128); the draws, and so the result, do not depend on it
    for start in range(0, trials, batch):
        g = rng.standard_normal((min(batch, trials - start), dim, p))
        basis = np.linalg.qr(g)[0]
        cos = np.clip(np.linalg.svd(basis[:, :q, :], compute_uv=False), 0.0, 1.0)
        means.append(np.degrees(np.arccos(cos)).mean(axis=1))
    m = np.concatenate(means)
    return float(m.mean()), float(m.std(ddof=1) / np.sqrt(m.size))


def _rank_rtol(m) -> float:
    """Singular values below ``rtol * s_max`` are rounding noise of the input's precision."""
    dtype = m.dtype if isinstance(m, torch.Tensor) else torch.float64 if np.asarray(m).dtype == np.float64 else torch.float32
    return 1e-10 if dtype == torch.float64 else 100 * torch.finfo(dtype).eps


def _top_columns(u: np.ndarray, s: np.ndarray, rank: int, rtol: float) -> np.ndarray:
    keep = min(rank, int((s > rtol * s[0]).sum())) if s.size and s[0] > 0 else 0
    return u[:, :keep]


def top_left_subspace(delta: torch.Tensor | np.ndarray, rank: int) -> np.ndarray:
    """Top-``rank`` left singular vectors of a 2-D delta (its dominant column space)."""
    u, s, _ = np.linalg.svd(_np64(delta), full_matrices=False)
    return _top_columns(u, s, rank, _rank_rtol(delta))


_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")


def layer_index(key: str) -> int | None:
    """Transformer block index parsed from a parameter name (``model.layers.3.`` -> 3)."""
    m = _LAYER_RE.search(key)
    return int(m.group(1)) if m else None


def lora_basis(module: LoraModule, side: str = "out") -> torch.Tensor:
    """Column space of the stored delta's output side (``out``: B, or A^T for fan-in-fan-out
    weights) or its input side (``in``)."""
    if side not in ("out", "in"):
        raise ConfigError(f"side must be 'out' or 'in', got {side!r}")
    out_side = module.B if not module.fan_in_fan_out else module.A.T
    in_side = module.A.T if not module.fan_in_fan_out else module.B
    return out_side if side == "out" else in_side


def lora_subspace_angles(modules_i: Mapping[str, LoraModule], modules_j: Mapping[str, LoraModule], side: str = "out") -> list[dict]:
    """Per adapted weight: principal angles between two LoRA experts' delta subspaces.

    Rows ``key, layer, n_angles, mean_angle, min_angle, max_angle`` (degrees) for the weights
    both experts adapt, in sorted key order.
    """
    rows = []
    for key in sorted(set(modules_i) & set(modules_j)):
        ang = principal_angles(lora_basis(modules_i[key], side), lora_basis(modules_j[key], side))
        rows.append({
            "key": key,
            "layer": layer_index(key),
            "n_angles": int(ang.size),
            "mean_angle": float(ang.mean()) if ang.size else float("nan"),
            "min_angle": float(ang.min()) if ang.size else float("nan"),
            "max_angle": float(ang.max()) if ang.size else float("nan"),
        })
    return rows


def pairwise_cosine(x: torch.Tensor | GramAccumulator) -> np.ndarray:
    """Cosine similarity matrix between experts (rows of ``x``)."""
    acc = x if isinstance(x, GramAccumulator) else gram_of(torch.as_tensor(x))
    return acc.cosine()


def randomized_left_subspace(delta: torch.Tensor, rank: int, generator: torch.Generator, oversample: int = 8, power_iters: int = 2) -> np.ndarray:
    """Approximate top-``rank`` left singular vectors by a seeded randomized range finder
    (cheap for large matrices; exact SVD is used when the matrix is small)."""
    return left_subspace_and_spectrum(delta, rank, generator, oversample, power_iters)[0]


def left_subspace_and_spectrum(
    delta: torch.Tensor, rank: int, generator: torch.Generator, oversample: int = 8, power_iters: int = 2
) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(basis, singular_values, complete)``: the top-``rank`` left singular subspace and the
    singular values found on the way: all of them (``complete``) when the matrix is small
    enough for an exact SVD, else the top ``rank + oversample`` from the randomized finder."""
    d = _np64(delta)
    m, n = d.shape
    q_cols = rank + oversample
    rtol = _rank_rtol(delta)
    if min(m, n) <= 2 * q_cols:
        u, s, _ = np.linalg.svd(d, full_matrices=False)
        return _top_columns(u, s, rank, rtol), s, True
    omega = torch.randn(n, q_cols, generator=generator, dtype=torch.float64).numpy()
    q, _ = np.linalg.qr(d @ omega)
    for _ in range(power_iters):
        q, _ = np.linalg.qr(d.T @ q)
        q, _ = np.linalg.qr(d @ q)
    u_small, s, _ = np.linalg.svd(q.T @ d, full_matrices=False)
    return q @ _top_columns(u_small, s, rank, rtol), s, False
