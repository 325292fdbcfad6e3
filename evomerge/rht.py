"""RHT (Reparameterized Heavy-Tailed) post-processing of merged task vectors.

Per tensor ``w`` (evomerge applies it to the merged *task vector*, the only thing a LoRA
merge has):

1. Gaussian difference: ``w' = w - g``, ``g ~ N(mu, (sigma_g * std(w))^2)``. evomerge's
   choice: ``sigma_g`` is relative to the tensor's own std (so one value fits tensors of any
   scale); ``mu`` is absolute (default 0).
2. Element-wise ``T(x) = sign(x) |x|^gamma (1 + alpha exp(-beta |x|))``. ``|x|^gamma`` is not
   scale-invariant (for LoRA deltas of size 1e-3 it would multiply everything by ~2 at
   gamma=0.9), so evomerge applies ``T`` to ``w' / rms(w')`` and multiplies the result by
   ``rms(w')`` again (evomerge's choice).
3. ``preserve_norm``: rescale to the Frobenius norm the tensor had before step 1.

With ``gamma=1, alpha=0, sigma_g=0, mu=0`` the tensor is returned unchanged (bit for bit).
Note on the name: for Gaussian input, ``gamma < 1`` *lowers* the kurtosis (the power
compresses large values, ``1 + alpha exp(-beta|x|)`` lifts small ones); see the tests.
"""

from __future__ import annotations

from typing import Mapping

import torch

from evomerge.errors import ConfigError
from evomerge.experts.types import TensorDict
from evomerge.merging.types import PerTaskMerge, key_generator


def _check(mu: float, sigma_g: float, gamma: float, alpha: float, beta: float) -> None:
    checks = [
        ("gamma", gamma, 0.0 < gamma <= 1.0, "in (0, 1]"),
        ("alpha", alpha, alpha >= 0.0, ">= 0"),
        ("beta", beta, beta >= 0.0, ">= 0"),
        ("sigma_g", sigma_g, sigma_g >= 0.0, ">= 0"),
        ("mu", mu, mu == mu and abs(mu) != float("inf"), "finite"),
    ]
    for name, value, ok, rule in checks:
        if not ok or value != value:
            raise ConfigError(f"rht: `{name}` must be {rule}. Got {value!r} instead.")


def heavy_tail_map(x: torch.Tensor, gamma: float, alpha: float, beta: float) -> torch.Tensor:
    """``T(x) = sign(x) |x|^gamma (1 + alpha exp(-beta |x|))`` element-wise (no rescaling)."""
    a = x.abs()
    y = a.pow(gamma) if gamma != 1.0 else a.clone()
    if alpha != 0.0:
        y.mul_(torch.exp(-beta * a).mul_(alpha).add_(1.0))
    return y.mul_(torch.sign(x))


def rht_transform(
    x: torch.Tensor,
    *,
    mu: float = 0.0,
    sigma_g: float,
    gamma: float,
    alpha: float,
    beta: float,
    preserve_norm: bool = True,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """RHT of one tensor (see the module doc); never modifies ``x``.

    ``noise``: a standard-normal tensor of ``x``'s shape to use instead of drawing from
    ``generator`` (for tests and for reusing draws); ``g = mu + sigma_g * std(x) * noise``.
    """
    _check(mu, sigma_g, gamma, alpha, beta)
    identity_map = gamma == 1.0 and alpha == 0.0
    if (identity_map and sigma_g == 0.0 and mu == 0.0) or x.numel() == 0:
        return x.clone()
    dtype = x.dtype
    w = x.to(torch.float32) if dtype in (torch.float16, torch.bfloat16) else x.clone()
    norm0 = torch.linalg.vector_norm(w)
    if sigma_g > 0.0:
        std = w.std() if w.numel() > 1 else torch.zeros((), dtype=w.dtype, device=w.device)
        if noise is None:
            if generator is None:
                raise ConfigError("rht: `sigma_g` > 0 needs a seeded torch.Generator (never the global RNG).")
            noise = torch.randn(w.shape, dtype=w.dtype, device=w.device, generator=generator)
        w = w - (mu + sigma_g * std * noise.to(device=w.device, dtype=w.dtype))
    elif mu != 0.0:
        w = w - mu
    if not identity_map:
        rms = torch.linalg.vector_norm(w) / (w.numel() ** 0.5)
        if rms > 0:
            w = heavy_tail_map(w / rms, gamma, alpha, beta).mul_(rms)
    if preserve_norm:
        norm1 = torch.linalg.vector_norm(w)
        if norm1 > 0:
            w = w * (norm0 / norm1)
    return w.to(dtype)


def apply_rht(
    td: Mapping[str, torch.Tensor], cfg, seed: int, *, include_1d: bool = False
) -> TensorDict:
    """RHT of every floating tensor of a (merged) task vector, per key with a generator
    seeded from ``(seed, key)``. ``cfg`` is an ``RHTConfig`` (its ``enabled`` flag is the
    caller's business: this function always applies the transform).

    Left unchanged (evomerge's choice): non-float tensors, and 1-D tensors (biases,
    norm scales; a handful of values where "tails" mean little) unless ``include_1d``.
    A :class:`PerTaskMerge` value (EMR) gets RHT on its unified vector; masks and
    rescalers are kept.
    """
    out: TensorDict = {}
    for key, t in td.items():
        if isinstance(t, PerTaskMerge):
            unified = apply_rht({key: t.unified}, cfg, seed, include_1d=include_1d)[key]
            out[key] = PerTaskMerge(unified, t.masks, t.rescalers)
            continue
        if not t.is_floating_point() or (t.dim() < 2 and not include_1d) or t.numel() < 2:
            out[key] = t
            continue
        gen = key_generator(seed, key, t.device, salt="rht")
        out[key] = rht_transform(
            t,
            mu=cfg.mu,
            sigma_g=cfg.sigma_g,
            gamma=cfg.gamma,
            alpha=cfg.alpha,
            beta=cfg.beta,
            preserve_norm=cfg.preserve_norm,
            generator=gen,
        )
    return out
