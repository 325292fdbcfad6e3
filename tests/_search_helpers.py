"""Shared synthetic problem for the search tests: small "ab" TensorDicts and a quadratic fitness."""

from __future__ import annotations

import numpy as np
import torch

from evomerge.search import expert_id, materialize

SHAPES = {"l0::A": (2, 4), "l0::B": (4, 2), "l1::A": (2, 3), "l1::B": (3, 2)}
DIM = sum(int(np.prod(s)) for s in SHAPES.values())


def flat(td):
    return torch.cat([td[k].flatten() for k in SHAPES])


def unflat(x):
    out, i = {}, 0
    for k, s in SHAPES.items():
        m = int(np.prod(s))
        out[k] = x[i:i + m].reshape(s).clone()
        i += m
    return out


def make_problem(n: int = 6, seed: int = 0):
    """Experts near different targets; fitness = -||x - T||^2 with T between them."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(DIM, generator=g)
    store = {expert_id(i): unflat(target + 1.5 * torch.randn(DIM, generator=g)) for i in range(n)}
    return store, lambda td: -float(((flat(td) - target) ** 2).sum())


def run(search, store, fit, *, rounds=None, gc=False):
    """Drive ``search`` ask/tell over an in-memory store; returns the final store."""
    store = dict(store)
    n = 0
    while not search.done and (rounds is None or n < rounds):
        recipes = search.ask()
        assert recipes, "ask() must not be empty while not done"
        for r in recipes:
            out = materialize(r, {k: store[k] for k in r.input_keys()})  # input_keys are all it reads
            assert tuple(out) == r.output_keys()
            store.update(out)
        search.tell({r.id: fit(store[r.id]) for r in recipes})
        if gc:
            keep = search.referenced_ids()
            store = {k: v for k, v in store.items() if k in keep}
        n += 1
    return store
