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
from evomerge.search.recipe import Op, Recipe, VelocityMode, key_seed, velocity_key

CROSSOVER_METHODS = ("linear", "blx")  # computed here; any other name is a merge-registry method


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


def low_rank_sum(factors: Sequence[tuple[torch.Tensor, torch.Tensor]], weights: Sequence[float],
                 rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """LoRA factors ``(A, B)`` of rank ``rank`` whose product ``B @ A`` is the best rank-``rank``
    approximation (Frobenius) of ``sum_i w_i B_i A_i``, the singular values split evenly
    (``sqrt`` on each factor); zero rows/columns pad a product of lower rank.

    The sum's own rank is at most ``sum_i rank_i``: it is factorised through thin QRs of the
    stacked factors and the SVD of their small core, never forming the dense product."""
    a0 = factors[0][0]
    b_cat = torch.cat([_work(b) * float(w) for (_, b), w in zip(factors, weights)], dim=1)  # out x sum r_i
    a_cat = torch.cat([_work(a) for a, _ in factors], dim=0)  # sum r_i x in
    qb, rb = torch.linalg.qr(b_cat)
    qa, ra = torch.linalg.qr(a_cat.T)
    u, s, vh = torch.linalg.svd(rb @ ra.T, full_matrices=False)
    k = min(int(rank), s.numel())
    root = s[:k].sqrt()
    b = torch.zeros(b_cat.shape[0], rank, dtype=b_cat.dtype, device=b_cat.device)
    a = torch.zeros(rank, a_cat.shape[1], dtype=a_cat.dtype, device=a_cat.device)
    b[:, :k] = qb @ (u[:, :k] * root)
    a[:k] = (root[:, None] * vh[:k]) @ qa.T
    return a.to(a0.dtype), b.to(factors[0][1].dtype)


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

    TIES-style methods use the registry's ``disjoint="weighted"`` mean ``sum_i w_i x_i / sum_i w_i``
    over the parents agreeing with the elected sign (set by :func:`merge_spec`), with the
    crossover weights: identical parents give themselves back (not half of themselves, the
    defect of the original GENOME code).
    """
    from evomerge.merging.registry import get_merge_method

    stacked = torch.stack([_work(t) for t in tensors])
    w = torch.tensor([float(x) for x in weights], dtype=stacked.dtype, device=stacked.device)
    out = get_merge_method(method)(stacked, w, generator=generator, stats=None, **dict(params))
    return out.to(tensors[0].dtype)


def merge_spec(method: str, density: float, blx: float) -> dict[str, Any]:
    """Recipe params of a pair merge: ``{"method": m}`` plus ``blx_alpha`` or the registry's
    ``merge_params`` (density where the method has one, the weighted disjoint mean for TIES)."""
    if method == "linear":
        return {"method": method}
    if method == "blx":
        return {"method": method, "blx_alpha": float(blx)}
    from evomerge.merging.registry import get_merge_method

    m = get_merge_method(method)  # ConfigError naming an unknown method
    names = {p.name for p in m.params}
    params: dict[str, Any] = {"density": float(density)} if "density" in names else {}
    if "disjoint" in names:
        params["disjoint"] = "weighted"
    m.resolve(params)  # raises ConfigError naming a bad value
    return {"method": method, "merge_params": params} if params else {"method": method}


# ---------------------------------------------------------------- whole TensorDicts
def _parents(recipe: Recipe, store: Mapping[str, TensorDict]) -> list[TensorDict]:
    missing = [p for p in recipe.parents if p not in store]
    if missing:
        raise KeyError(f"recipe {recipe.id} ({recipe.op}) needs {missing}, which are not in the store")
    return [store[p] for p in recipe.parents]


def _pair_linear(recipe: Recipe, key: str, ts: list[torch.Tensor]) -> torch.Tensor:
    return linear_combine(ts, recipe.weights)


def _pair_blx(recipe: Recipe, key: str, ts: list[torch.Tensor]) -> torch.Tensor:
    return blx_alpha(ts, float(recipe.params["blx_alpha"]), _generator(ts[0], recipe.seed, key))


def _pair_registry(recipe: Recipe, key: str, ts: list[torch.Tensor]) -> torch.Tensor:
    return registry_crossover(recipe.params["method"], ts, recipe.weights, recipe.params.get("merge_params", {}),
                              _generator(ts[0], recipe.seed, key))


_PAIR_OPS = {"linear": _pair_linear, "blx": _pair_blx}  # anything else: the merge registry


def _combine(recipe: Recipe, parents: list[TensorDict]) -> TensorDict:
    op = _PAIR_OPS.get(recipe.params.get("method", "linear"), _pair_registry)
    return {key: op(recipe, key, [p[key] for p in parents]) for key in parents[0]}


def _velocity(recipe: Recipe, x: TensorDict, store: Mapping[str, TensorDict]) -> Mapping[str, torch.Tensor]:
    """The particle's previous velocity (stored, ``ref - x`` for the initial one, or zero)."""
    mode = VelocityMode(recipe.params.get("velocity", VelocityMode.STORED))
    if mode is VelocityMode.STORED:
        return store[velocity_key(recipe.parents[0])]
    if mode is VelocityMode.DIFF:  # initial velocity: store[ref] - x (a random other particle, or the best)
        ref = store[recipe.params["velocity_ref"]]
        return {k: _work(ref[k]) - _work(x[k]) for k in x}
    return {k: torch.zeros_like(_work(x[k])) for k in x}


def _move(recipe: Recipe, store: Mapping[str, TensorDict]) -> dict[str, TensorDict]:
    x, p, g, gw = _parents(recipe, store)
    v_old = _velocity(recipe, x, store)
    step = float(recipe.params["step"])
    new_x: TensorDict = {}
    new_v: TensorDict = {}
    for key, xk in x.items():
        v = pso_velocity(xk, v_old[key], p[key], g[key], gw[key], recipe.weights)
        new_v[key] = v
        new_x[key] = (_work(xk) + step * v).to(xk.dtype)
    return {recipe.id: new_x, velocity_key(recipe.id): new_v}


def _expert(recipe: Recipe, store: Mapping[str, TensorDict]) -> dict[str, TensorDict]:
    (parent,) = _parents(recipe, store)
    return {recipe.id: dict(parent)}  # store entries are immutable: share the tensors


def _pad(recipe: Recipe, store: Mapping[str, TensorDict]) -> dict[str, TensorDict]:
    parents = _parents(recipe, store)
    return {recipe.id: {k: linear_combine([p[k] for p in parents], recipe.weights) for k in parents[0]}}


def _init_sum(recipe: Recipe, store: Mapping[str, TensorDict]) -> dict[str, TensorDict]:
    """``lambda * sum_i e_i``; in "ab" space per LoRA layer :func:`low_rank_sum` at the first
    expert's rank (tensors that are no factor pair are summed)."""
    if not recipe.is_low_rank_sum:
        return _pad(recipe, store)
    from evomerge.experts.types import AB_SUFFIX_A, AB_SUFFIX_B

    parents = _parents(recipe, store)
    out: TensorDict = {}
    for key in parents[0]:
        if key in out:
            continue
        suffix = next((s for s in (AB_SUFFIX_A, AB_SUFFIX_B) if key.endswith(s)), None)
        if suffix is None:
            out[key] = linear_combine([p[key] for p in parents], recipe.weights)
            continue
        ka, kb = key[: -len(suffix)] + AB_SUFFIX_A, key[: -len(suffix)] + AB_SUFFIX_B
        rank = parents[0][ka].shape[0]
        out[ka], out[kb] = low_rank_sum([(p[ka], p[kb]) for p in parents], recipe.weights, rank)
    return {recipe.id: {k: out[k] for k in parents[0]}}


def _pair(recipe: Recipe, store: Mapping[str, TensorDict]) -> dict[str, TensorDict]:
    return {recipe.id: _combine(recipe, _parents(recipe, store))}


def _init_merge(recipe: Recipe, store: Mapping[str, TensorDict]) -> dict[str, TensorDict]:
    """The registry's merge of the parents at its own defaults (what ``evomerge merge`` gives)."""
    from evomerge.merging.apply import merge_tensordicts

    return {recipe.id: merge_tensordicts(recipe.params["method"], _parents(recipe, store), seed=recipe.seed)}


def _mutate(recipe: Recipe, store: Mapping[str, TensorDict]) -> dict[str, TensorDict]:
    (parent,) = _parents(recipe, store)
    sigma, rate = float(recipe.params["sigma"]), float(recipe.params["gene_mut_rate"])
    return {recipe.id: {k: mutate_tensor(t, sigma, rate, _generator(t, recipe.seed, k)) for k, t in parent.items()}}


_MATERIALIZE = {
    Op.EXPERT: _expert, Op.PAD: _pad, Op.INIT_SUM: _init_sum, Op.INIT_MERGE: _init_merge, Op.INIT_PAIR: _pair,
    Op.CROSSOVER: _pair, Op.MUTATE: _mutate, Op.MUTATE_COEFF: _pad, Op.PSO_MOVE: _move,
}


def _coef_move(recipe: Recipe, store: Mapping[str, TensorDict], keys: Sequence[str] | None) -> dict[str, TensorDict]:
    """A PSO move whose inputs are coefficient vectors over ``params["basis"]`` (search/linear.py):
    the move is done on the coefficients (float64), each output is one weighted sum of the basis."""
    from evomerge.search import linear

    x, v, p, g, w = linear.unpack(recipe.params)
    new_x, new_v = linear.move(x, v, p, g, w, recipe.weights, float(recipe.params["step"]))
    out: dict[str, TensorDict] = {}
    for key, coef in zip(recipe.output_keys(), (new_x, new_v)):
        if keys is None or key in keys:
            out[key] = linear.combine(coef or {k: 0.0 for k in recipe.params["basis"][:1]}, store)
    return out


def materialize(recipe: Recipe, store: Mapping[str, TensorDict], keys: Sequence[str] | None = None) -> dict[str, TensorDict]:
    """Apply ``recipe`` to the parents' weights in ``store``; return the new store entries
    (exactly ``recipe.output_keys()``; a coefficient move only those in ``keys`` when given).
    ``store`` is not modified."""
    if recipe.is_coefficient_move:
        return _coef_move(recipe, store, keys)
    try:
        fn = _MATERIALIZE[Op(recipe.op)]
    except ValueError:
        raise ValueError(f"recipe {recipe.id}: unknown op {recipe.op!r}") from None
    return fn(recipe, store)
