"""Individuals as coefficient vectors over a basis of held weights (Model Swarms' state).

Every Model Swarms step is linear: an expert copy, a padding ``w*p1 + (1-w)*p2``, a
task-arithmetic point ``lambda * sum_i e_i`` and a PSO move
``v' = a0 v + a1 (p - x) + a2 (g - x) - a3 (g_worst - x)``, ``x' = x + step v'`` with scalar
``a``. So each position and velocity is ``sum_k c_k * basis_k`` over the experts (in "ab" space
the same ``c`` applies to every A and every B factor, as the move applies to each factor; in
"delta" space to the dense deltas), plus, as their own basis entries, the individuals no linear
step makes (registry merges: TIES, DARE-TIES). The search keeps ``{basis key: float}`` dicts
(float64) and a move recipe carries its inputs' coefficients; the weights are made only when a
holder materialises the recipe (:func:`combine`), in one weighted sum. That rounds differently
from iterating the moves on fp32 weights (docs/search.md gives the measured difference), and
needs no velocity and no earlier position held as weights.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from evomerge.experts.types import TensorDict
from evomerge.search.recipe import Op, Recipe

Coef = dict[str, float]
MOVE_INPUTS = ("x", "v", "p", "g", "w")  # rows of a move recipe's ``coef``: position, velocity, pbest, gbest, gworst


def _order(key: str) -> tuple[int, int, str]:
    """Experts (``e<i>``) first by index, then other basis entries by name."""
    if key[:1] == "e" and key[1:].isdigit():
        return (0, int(key[1:]), key)
    return (1, 0, key)


def basis_of(*coefs: Mapping[str, float]) -> list[str]:
    """The canonical order of every key that any of ``coefs`` uses."""
    return sorted({k for c in coefs for k in c}, key=_order)


def init_coefficients(recipe: Recipe, known: Mapping[str, Coef]) -> Coef | None:
    """Coefficients of an initial individual: expert copies, paddings, sums and linear pairs are
    combinations of their parents (experts are ``{e_i: 1}``); anything else is None (a basis
    entry), an "ab"-space sum among them (its factors are not a combination of the experts')."""
    linear = (recipe.op in (Op.EXPERT, Op.PAD, Op.INIT_SUM, Op.MUTATE_COEFF) and not recipe.is_low_rank_sum) or (
        recipe.op in (Op.INIT_PAIR, Op.CROSSOVER) and recipe.params.get("method", "linear") == "linear")
    if not linear or any(p not in known for p in recipe.parents):
        return None
    weights = (1.0,) if recipe.op == Op.EXPERT else recipe.weights
    out: Coef = {}
    for parent, w in zip(recipe.parents, weights):
        for k, c in known[parent].items():
            out[k] = out.get(k, 0.0) + float(w) * c
    return out


def axpy(terms: Sequence[tuple[float, Mapping[str, float]]]) -> Coef:
    """``sum_j s_j * c_j`` of coefficient dicts."""
    out: Coef = {}
    for s, c in terms:
        for k, v in c.items():
            out[k] = out.get(k, 0.0) + float(s) * v
    return out


def move(x: Coef, v: Coef, p: Coef, g: Coef, w: Coef, a: Sequence[float], step: float) -> tuple[Coef, Coef]:
    """The PSO move in coefficient space (:func:`evomerge.search.operators.pso_velocity` and
    ``x + step * v'`` on the weights): returns ``(x', v')``."""
    v_new = axpy([(a[0], v), (a[1], p), (-a[1], x), (a[2], g), (-a[2], x), (-a[3], w), (a[3], x)])
    return axpy([(1.0, x), (float(step), v_new)]), v_new


def pack(x: Coef, v: Coef, p: Coef, g: Coef, w: Coef) -> dict[str, list]:
    """Recipe params of a coefficient move: ``basis`` (its input keys) and one row per input."""
    basis = basis_of(x, v, p, g, w)
    return {"basis": basis, "coef": [[float(c.get(k, 0.0)) for k in basis] for c in (x, v, p, g, w)]}


def unpack(params: Mapping[str, object]) -> tuple[Coef, ...]:
    """The five input dicts (x, v, p, g, w) of a coefficient move's params."""
    basis = list(params["basis"])  # type: ignore[arg-type]
    rows = params["coef"]  # type: ignore[index]
    if len(rows) != len(MOVE_INPUTS) or any(len(r) != len(basis) for r in rows):  # type: ignore[arg-type]
        raise ValueError(f"coefficient move: `coef` must be {len(MOVE_INPUTS)} rows of {len(basis)} floats")
    return tuple({k: float(c) for k, c in zip(basis, row)} for row in rows)  # type: ignore[union-attr]


def on_weights(recipe: Recipe) -> Recipe:
    """The same recipe with its coefficients stripped: a move then reads its velocity and
    inputs from held weights, as before coefficient moves (checkpoints written without them)."""
    params = {k: v for k, v in recipe.params.items() if k not in ("basis", "coef")}
    return Recipe(recipe.id, recipe.op, recipe.parents, recipe.weights, params, recipe.seed, recipe.generation)


def combine(coef: Mapping[str, float], store: Mapping[str, TensorDict]) -> TensorDict:
    """``sum_k coef_k * store[k]`` per tensor, in the basis' canonical order, computed in float32
    at least (:func:`evomerge.search.operators.linear_combine`); zero terms are skipped."""
    from evomerge.search.operators import linear_combine

    keys = [k for k in basis_of(coef) if coef[k] != 0.0] or basis_of(coef)[:1]
    missing = [k for k in keys if k not in store]
    if missing:
        raise KeyError(f"coefficient move needs {missing}, which are not in the store")
    first = store[keys[0]]
    weights = [float(coef[k]) for k in keys]
    return {name: linear_combine([store[k][name] for k in keys], weights) for name in first}
