"""RHT (Reparameterized Heavy-Tailed) post-processing of a merged task vector, as the seed paper
writes it, per tensor ``w``:

1. Gaussian difference ``w' = w - g``, ``g ~ N(mu, sigma_g^2 I)``, centred at the tensor's mean:
   ``mu = mean(w)`` (``centre: mean``, the default) or the absolute ``mu`` (``centre: absolute``).
2. ``T(x) = sign(x) |x|^gamma (1 + alpha exp(-beta |x|))`` element-wise on ``w'``.

evomerge's choices, each an explicit option (docs/merging.md):

* the centre is added back after ``T`` (``out = T(w') + mu``), so the transform is the identity
  at ``gamma = 1, alpha = 0, sigma_g = 0`` for every centre (bit for bit);
* ``units: raw`` (default) applies the constants to the values as they are, the paper's literal
  transform; ``units: std`` measures ``sigma_g``, ``x`` and ``1/beta`` in units of the tensor's
  std ``s`` (``out = s T(w'/s) + mu``, ``g ~ N(mu, (sigma_g s)^2)``), so one set of constants fits
  tensors of any scale (``|x|^gamma`` alone multiplies a 1e-3 vector by about 2 at gamma = 0.9);
* ``preserve_norm`` (default true) rescales the result to the Frobenius norm of ``w``; false is
  the literal transform;
* ``domain`` (default ``delta``): on LoRA factor results (``name::A`` / ``name::B``), ``delta``
  transforms the dense products ``B @ A`` (the result becomes a dense task vector) and
  ``factors`` transforms A and B separately. Dense results have only the delta domain.

Note on the name: for Gaussian input, ``gamma < 1`` *lowers* the kurtosis (the power compresses
large values, ``1 + alpha exp(-beta|x|)`` lifts small ones); see the tests.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

from evomerge.errors import ConfigError
from evomerge.experts.types import AB_SUFFIX_A, AB_SUFFIX_B, TensorDict, ab_to_lora
from evomerge.merging.types import PerTaskMerge
from evomerge.seeding import tensor_generator

CENTRES = ("mean", "absolute")
UNITS = ("raw", "std")
DOMAINS = ("delta", "factors")


def check_constants(*, mu: float, sigma_g: float, gamma: float, alpha: float, beta: float,
                    centre: str = "mean", units: str = "raw") -> None:
    """Refuse a constant outside its domain, naming it (``rht.<key>``)."""
    checks = [
        ("gamma", gamma, 0.0 < gamma <= 1.0, "in (0, 1]"),
        ("alpha", alpha, alpha >= 0.0 and math.isfinite(alpha), "finite and >= 0"),
        ("beta", beta, beta >= 0.0 and math.isfinite(beta), "finite and >= 0"),
        ("sigma_g", sigma_g, sigma_g >= 0.0 and math.isfinite(sigma_g), "finite and >= 0"),
        ("mu", mu, math.isfinite(mu), "finite"),
    ]
    for name, value, ok, rule in checks:
        if not ok or value != value:
            raise ConfigError(f"rht: `rht.{name}` must be {rule}. Got {value!r} instead.")
    for name, value, allowed in (("centre", centre, CENTRES), ("units", units, UNITS)):
        if value not in allowed:
            raise ConfigError(f"rht: `rht.{name}` must be one of {list(allowed)}. Got {value!r} instead.")


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
    sigma_g: float,
    gamma: float,
    alpha: float,
    beta: float,
    centre: str = "mean",
    mu: float = 0.0,
    units: str = "raw",
    preserve_norm: bool = True,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """RHT of one tensor (see the module doc); never modifies ``x``.

    ``noise``: a standard-normal tensor of ``x``'s shape to use instead of drawing from
    ``generator`` (tests, reused draws): ``g = mu + sigma_g * s * noise`` (``s = 1`` in raw units).
    """
    check_constants(mu=mu, sigma_g=sigma_g, gamma=gamma, alpha=alpha, beta=beta, centre=centre, units=units)
    if (gamma == 1.0 and alpha == 0.0 and sigma_g == 0.0) or x.numel() == 0:
        return x.clone()
    dtype = x.dtype
    w = x.to(torch.float32) if dtype in (torch.float16, torch.bfloat16) else x.clone()
    c = w.mean() if centre == "mean" else torch.tensor(mu, dtype=w.dtype, device=w.device)
    s = torch.ones((), dtype=w.dtype, device=w.device)
    if units == "std":
        s = w.std() if w.numel() > 1 else torch.zeros((), dtype=w.dtype, device=w.device)
        if not s > 0:  # a constant tensor has no spread to measure in
            return x.clone()
    wp = w - c
    if sigma_g > 0.0:
        if noise is None:
            if generator is None:
                raise ConfigError("rht: `rht.sigma_g` > 0 needs a seeded torch.Generator (never the global RNG).")
            noise = torch.randn(w.shape, dtype=w.dtype, device=w.device, generator=generator)
        wp = wp - (sigma_g * s) * noise.to(device=w.device, dtype=w.dtype)
    out = heavy_tail_map(wp / s, gamma, alpha, beta).mul_(s) if units == "std" else heavy_tail_map(wp, gamma, alpha, beta)
    out = out + c
    if preserve_norm:
        n1 = torch.linalg.vector_norm(out)
        if n1 > 0:
            out = out * (torch.linalg.vector_norm(w) / n1)
    return out.to(dtype)


def has_factors(td: Mapping[str, object]) -> bool:
    return any(k.endswith(AB_SUFFIX_A) or k.endswith(AB_SUFFIX_B) for k in td)


def factors_to_deltas(td: Mapping[str, torch.Tensor], fan_in_fan_out: Mapping[str, bool] | None = None) -> TensorDict:
    """``name::A`` / ``name::B`` pairs to dense deltas ``B @ A`` in stored layout (other keys as they are)."""
    out: TensorDict = {k: v for k, v in td.items() if not (k.endswith(AB_SUFFIX_A) or k.endswith(AB_SUFFIX_B))}
    for name, mod in ab_to_lora(td, fan_in_fan_out).items():
        out[name] = mod.delta(torch.float32)
    return out


def apply_rht(
    td: Mapping[str, torch.Tensor], cfg, seed: int, *, include_1d: bool = False,
    fan_in_fan_out: Mapping[str, bool] | None = None,
) -> TensorDict:
    """RHT of every floating tensor of a (merged) task vector, per key with a generator seeded
    from ``(seed, key)`` (:func:`evomerge.seeding.tensor_generator`; take ``seed`` from
    :func:`evomerge.seeding.rht_seed`). ``cfg`` is an ``RHTConfig`` (its ``enabled`` flag is the
    caller's business: this function always applies the transform).

    LoRA factor results follow ``cfg.domain``: ``delta`` returns dense deltas keyed by module name
    (``fan_in_fan_out`` gives each module's stored layout), ``factors`` transforms A and B.
    Left unchanged (evomerge's choice): non-float tensors, and 1-D tensors (biases, norm scales;
    a handful of values where "tails" mean little) unless ``include_1d``. A
    :class:`PerTaskMerge` value (EMR) gets RHT on its unified vector; masks and rescalers are kept.
    """
    domain = getattr(cfg, "domain", "delta")
    if domain not in DOMAINS:
        raise ConfigError(f"rht: `rht.domain` must be one of {list(DOMAINS)}. Got {domain!r} instead.")
    if has_factors(td):
        if domain == "delta":
            td = factors_to_deltas(td, fan_in_fan_out)
    elif domain == "factors":
        raise ConfigError(
            "rht: `rht.domain` factors needs a LoRA factor result (merge.space ab or concat, evolve space ab); "
            "this result is a dense task vector: use rht.domain delta"
        )
    out: TensorDict = {}
    for key, t in td.items():
        if isinstance(t, PerTaskMerge):
            unified = apply_rht({key: t.unified}, cfg, seed, include_1d=include_1d)[key]
            out[key] = t.replace(unified=unified)
            continue
        if not t.is_floating_point() or (t.dim() < 2 and not include_1d) or t.numel() < 2:
            out[key] = t
            continue
        out[key] = rht_transform(
            t,
            centre=cfg.centre,
            mu=cfg.mu,
            sigma_g=cfg.sigma_g,
            gamma=cfg.gamma,
            alpha=cfg.alpha,
            beta=cfg.beta,
            units=cfg.units,
            preserve_norm=cfg.preserve_norm,
            generator=tensor_generator(seed, key, t.device, salt="rht"),
        )
    return out
