"""Search operators on "ab"-space TensorDicts and :func:`materialize`, which applies a recipe.

Every function here is pure: inputs are never modified, randomness comes from a
``torch.Generator`` seeded from the recipe's seed and the tensor key (so the result does not
depend on the order keys are visited), and results stay on the inputs' device.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from evomerge.errors import ConfigError
from evomerge.experts.types import TensorDict
from evomerge.search.recipe import Recipe, key_seed, velocity_key

CROSSOVER_METHODS = ("linear", "ties", "dare_ties", "blx")
# crossover name -> merge registry method (linear and blx are elementwise and computed here)
_REGISTRY_CROSSOVER = {"ties": "ties", "dare_ties": "dare_ties"}


def _generator(like: torch.Tensor, seed: int, key: str) -> torch.Generator:
    return torch.Generator(device=like.device).manual_seed(key_seed(seed, key))


def _work(t: torch.Tensor) -> torch.Tensor:
    """Compute in float32 at least (half-precision inputs lose small updates)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


# ---------------------------------------------------------------- per-tensor operators
def linear_combine(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """``sum_i w_i x_i``."""
    out = _work(tensors[0]) * float(weights[0])
    for t, w in zip(tensors[1:], weights[1:]):
        out = out + _work(t) * float(w)
    return out.to(tensors[0].dtype)


def blx_alpha(tensors: Sequence[torch.Tensor], alpha: float, generator: torch.Generator) -> torch.Tensor:
    """BLX-alpha: each coordinate uniform in ``[min - alpha*I, max + alpha*I]``, ``I = max - min``.

    (A convex weighted sum always lies in ``[min, max]``, so clamping one to the widened box
    would be a no-op; sampling the box is the operator's defining behaviour.)
    """
    stacked = torch.stack([_work(t) for t in tensors])
    lo, hi = stacked.min(dim=0).values, stacked.max(dim=0).values
    span = hi - lo
    lo, hi = lo - alpha * span, hi + alpha * span
    u = torch.rand(lo.shape, generator=generator, device=lo.device, dtype=lo.dtype)
    return (lo + u * (hi - lo)).to(tensors[0].dtype)


def mutate_tensor(x: torch.Tensor, sigma: float, rate: float, generator: torch.Generator) -> torch.Tensor:
    """Add ``N(0, sigma^2)`` to each coordinate independently with probability ``rate``."""
    w = _work(x)
    mask = torch.rand(w.shape, generator=generator, device=w.device, dtype=w.dtype) < rate
    noise = torch.randn(w.shape, generator=generator, device=w.device, dtype=w.dtype) * sigma
    return (w + noise * mask).to(x.dtype)


def pso_velocity(
    x: torch.Tensor, v: torch.Tensor, pbest: torch.Tensor, gbest: torch.Tensor, gworst: torch.Tensor,
    a: Sequence[float],
) -> torch.Tensor:
    """Model Swarms velocity: ``a0 v + a1 (p - x) + a2 (g - x) - a3 (g_worst - x)``."""
    x, v, pbest, gbest, gworst = (_work(t) for t in (x, v, pbest, gbest, gworst))
    return a[0] * v + a[1] * (pbest - x) + a[2] * (gbest - x) - a[3] * (gworst - x)


def registry_crossover(
    method: str, tensors: Sequence[torch.Tensor], weights: Sequence[float], params: Mapping[str, Any],
    generator: torch.Generator,
) -> torch.Tensor:
    """Merge one tensor of each parent through the merge registry (the one TIES/DARE).

    Uses the registry's ``disjoint="weighted"`` mean ``sum_i w_i x_i / sum_i w_i`` over the
    parents agreeing with the elected sign, with the (normalised) crossover weights: identical
    parents give themselves back (not half of themselves, the defect of the original GENOME
    code), and a coordinate where one parent agrees takes that parent's value.
    """
    from evomerge.merging.registry import get_merge_method

    fn = get_merge_method(method)
    stacked = torch.stack([_work(t) for t in tensors])
    w = torch.tensor([float(x) for x in weights], dtype=stacked.dtype, device=stacked.device)
    out = fn(stacked, w, generator=generator, stats=None, **{**dict(params), "disjoint": "weighted"})
    return out.to(tensors[0].dtype)


def crossover_params(method: str, density: float) -> dict[str, Any]:
    """Registry parameters for a crossover method, checked against the registry's schema."""
    if method not in CROSSOVER_METHODS:
        raise ConfigError(f"genome: `crossover` must be one of {list(CROSSOVER_METHODS)}. Got {method!r} instead.")
    if method not in _REGISTRY_CROSSOVER:
        return {}
    from evomerge.merging.registry import get_merge_method

    m = get_merge_method(_REGISTRY_CROSSOVER[method])
    names = {p.name for p in m.params}
    params = {"density": density} if "density" in names else {}
    m.resolve(params)  # raises ConfigError naming the bad value
    return params


# ---------------------------------------------------------------- whole TensorDicts
def _parents(recipe: Recipe, store: Mapping[str, TensorDict]) -> list[TensorDict]:
    missing = [p for p in recipe.parents if p not in store]
    if missing:
        raise KeyError(f"recipe {recipe.id} ({recipe.op}) needs {missing}, which are not in the store")
    return [store[p] for p in recipe.parents]


def _combine(recipe: Recipe, parents: list[TensorDict]) -> TensorDict:
    method = recipe.params.get("method", "linear")
    out: TensorDict = {}
    for key in parents[0]:
        ts = [p[key] for p in parents]
        if method == "linear":
            out[key] = linear_combine(ts, recipe.weights)
        elif method == "blx":
            out[key] = blx_alpha(ts, float(recipe.params["blx_alpha"]), _generator(ts[0], recipe.seed, key))
        elif method in _REGISTRY_CROSSOVER:
            out[key] = registry_crossover(
                _REGISTRY_CROSSOVER[method], ts, recipe.weights, recipe.params.get("merge_params", {}),
                _generator(ts[0], recipe.seed, key),
            )
        else:
            raise ConfigError(f"recipe {recipe.id}: unknown crossover method `{method}`")
    return out


def _move(recipe: Recipe, store: Mapping[str, TensorDict]) -> dict[str, TensorDict]:
    x, p, g, gw = _parents(recipe, store)
    mode = recipe.params.get("velocity", "stored")
    if mode == "stored":
        v_old = store[velocity_key(recipe.parents[0])]
    elif mode == "diff":  # initial velocity: store[ref] - x (a random other particle, or the best)
        ref = store[recipe.params["velocity_ref"]]
        v_old = {k: _work(ref[k]) - _work(x[k]) for k in x}
    elif mode == "zero":
        v_old = {k: torch.zeros_like(_work(x[k])) for k in x}
    else:
        raise ValueError(f"recipe {recipe.id}: unknown velocity mode {mode!r}")
    step = float(recipe.params["step"])
    new_x: TensorDict = {}
    new_v: TensorDict = {}
    for key, xk in x.items():
        v = pso_velocity(xk, v_old[key], p[key], g[key], gw[key], recipe.weights)
        new_v[key] = v
        new_x[key] = (_work(xk) + step * v).to(xk.dtype)
    return {recipe.id: new_x, velocity_key(recipe.id): new_v}


def materialize(recipe: Recipe, store: Mapping[str, TensorDict]) -> dict[str, TensorDict]:
    """Apply ``recipe`` to the parents' weights in ``store``; return the new store entries.

    Always ``{recipe.id: weights}``; a ``pso_move`` also returns ``{velocity_key(recipe.id): v}``.
    ``store`` is not modified.
    """
    op = recipe.op
    if op == "expert":
        (parent,) = _parents(recipe, store)
        return {recipe.id: dict(parent)}  # store entries are immutable: share the tensors
    if op == "pad":
        return {recipe.id: _combine(Recipe(recipe.id, op, recipe.parents, recipe.weights, {"method": "linear"}), _parents(recipe, store))}
    if op in ("init_pair", "crossover"):
        return {recipe.id: _combine(recipe, _parents(recipe, store))}
    if op == "mutate":
        (parent,) = _parents(recipe, store)
        sigma, rate = float(recipe.params["sigma"]), float(recipe.params["gene_mut_rate"])
        return {recipe.id: {k: mutate_tensor(t, sigma, rate, _generator(t, recipe.seed, k)) for k, t in parent.items()}}
    if op == "pso_move":
        return _move(recipe, store)
    raise ValueError(f"recipe {recipe.id}: unknown op {op!r}")
