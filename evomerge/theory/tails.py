"""Heavy-tail statistics of weights and task vectors."""

from __future__ import annotations

import math

import numpy as np
import torch

from evomerge.errors import ConfigError


def _flat64(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(x).detach().reshape(-1).to(torch.float64)
    if t.numel() == 0:
        raise ConfigError("cannot compute tail statistics of an empty tensor")
    return t


def excess_kurtosis(x: torch.Tensor | np.ndarray) -> float:
    """Population excess kurtosis ``m4 / m2^2 - 3`` (Gaussian 0, Laplace 3, uniform -1.2).

    NaN for a constant input.
    """
    t = _flat64(x)
    c = t - t.mean()
    m2 = float((c * c).mean())
    if m2 <= 0:
        return float("nan")
    return float((c**4).mean()) / (m2 * m2) - 3.0


def kurtosis_from_moments(n: float, s1: float, s2: float, s3: float, s4: float) -> float:
    """Excess kurtosis from raw power sums ``s_p = sum x^p`` (for streaming accumulation)."""
    if n <= 0:
        return float("nan")
    m1, e2, e3, e4 = s1 / n, s2 / n, s3 / n, s4 / n
    m2 = e2 - m1 * m1
    m4 = e4 - 4 * m1 * e3 + 6 * m1 * m1 * e2 - 3 * m1**4
    if m2 <= 0:
        return float("nan")
    return m4 / (m2 * m2) - 3.0


def hill_tail_index(x: torch.Tensor | np.ndarray, k_frac: float = 0.01, k_min: int = 10) -> float:
    """Hill estimate of the tail index ``alpha`` of ``|x|`` (``P(|X| > t) ~ t^-alpha``).

    Uses the top ``k = max(k_min, k_frac * n)`` order statistics:
    ``alpha = 1 / mean(log(x_(i) / x_(k+1)))``. Smaller means heavier tails; a Gaussian gives a
    large value that grows with n (no power-law tail). NaN when too few non-zero values.
    """
    if not 0.0 < k_frac < 1.0:
        raise ConfigError(f"k_frac must be in (0, 1), got {k_frac}")
    a = _flat64(x).abs()
    a = a[a > 0]
    n = a.numel()
    k = max(int(k_min), int(math.floor(k_frac * n)))
    if n < k + 1 or k < 1:
        return float("nan")
    top = torch.topk(a, k + 1).values  # descending
    logs = torch.log(top[:k] / top[k])
    mean = float(logs.mean())
    return 1.0 / mean if mean > 0 else float("inf")


def singular_value_tail(delta: torch.Tensor | np.ndarray, k_frac: float = 0.1) -> dict[str, float]:
    """Spectrum summary of a 2-D delta: how concentrated and heavy-tailed its singular values are
    (see :func:`spectrum_summary`)."""
    d = np.asarray(delta.detach().cpu().to(torch.float64) if isinstance(delta, torch.Tensor) else delta, dtype=np.float64)
    if d.ndim != 2:
        raise ConfigError(f"singular_value_tail needs a matrix, got shape {d.shape}")
    return spectrum_summary(np.linalg.svd(d, compute_uv=False), k_frac)


def lora_singular_values(b: torch.Tensor, a: torch.Tensor, scale: float) -> np.ndarray:
    """Singular values of ``scale * B @ A`` from two thin QRs and an r x r SVD (never forms
    the full delta): ``B A = Q_B (R_B R_A^T) Q_A^T``."""
    _, rb = np.linalg.qr(b.detach().cpu().to(torch.float64).numpy())
    _, ra = np.linalg.qr(a.detach().cpu().to(torch.float64).numpy().T)
    return abs(scale) * np.linalg.svd(rb @ ra.T, compute_uv=False)


def partial_spectrum_summary(top_singular_values, frobenius2: float) -> dict[str, float]:
    """What the top singular values and ``||D||_F^2`` alone determine: ``stable_rank`` and
    ``top1_energy``; the rest of :func:`spectrum_summary` is NaN."""
    s_max = float(np.max(top_singular_values, initial=0.0))
    nan = float("nan")
    if s_max <= 0 or frobenius2 <= 0:
        return {"stable_rank": 0.0, "effective_rank": nan, "top1_energy": nan, "sv_kurtosis": nan, "sv_hill": nan}
    return {"stable_rank": frobenius2 / s_max**2, "effective_rank": nan, "top1_energy": s_max**2 / frobenius2,
            "sv_kurtosis": nan, "sv_hill": nan}


def spectrum_summary(singular_values, k_frac: float = 0.1) -> dict[str, float]:
    """``stable_rank = sum s^2 / s_max^2``; ``effective_rank = exp(entropy of s / sum s)``;
    ``top1_energy`` = share of ``sum s^2`` in the first singular value; ``sv_kurtosis`` and
    ``sv_hill`` (Hill index over the singular values, NaN when there are too few)."""
    s = np.sort(np.asarray(singular_values, dtype=np.float64).ravel())[::-1]
    s = s[s > 1e-12 * s[0]] if s.size and s[0] > 0 else s[:0]
    if s.size == 0:
        nan = float("nan")
        return {"stable_rank": 0.0, "effective_rank": 0.0, "top1_energy": nan, "sv_kurtosis": nan, "sv_hill": nan}
    e = s * s
    p = s / s.sum()
    return {
        "stable_rank": float(e.sum() / e[0]),
        "effective_rank": float(np.exp(-(p * np.log(p)).sum())),
        "top1_energy": float(e[0] / e.sum()),
        "sv_kurtosis": excess_kurtosis(s) if s.size > 1 else float("nan"),
        "sv_hill": hill_tail_index(s, k_frac=k_frac, k_min=2),
    }
