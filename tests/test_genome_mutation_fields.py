"""``MUTATION_FIELDS`` and ``resolve_mutation`` (evomerge.search.genome, which tune's space checks
use) against what GENOME's mutants actually depend on: each claim is checked by changing a config
value and materialising the children, not by reading the declaration back."""

from __future__ import annotations

import typing

import pytest
import torch

from evomerge.config.sections import GenomeConfig
from evomerge.search import Genome, materialize
from evomerge.search.genome import MUTATION_FIELDS, resolve_mutation

from _search_helpers import flat, make_problem

KINDS = sorted(set(typing.get_args(GenomeConfig.model_fields["mutation"].annotation)) - {"auto"})
FLOAT_FIELDS = [n for n, f in GenomeConfig.model_fields.items() if f.annotation is float]
# every individual mutates, no crossover: the first breed round is all mutants
BASE = {"population": 4, "init_sums": [], "init_merges": [], "cross_rate": 0.0, "ind_mut_rate": 1.0}


def _children(**cfg) -> list[torch.Tensor]:
    """The first breed round's children of a tiny GENOME run, materialised."""
    store, _ = make_problem()
    s = Genome(GenomeConfig(**{**BASE, **cfg}), 6, seed=0)
    init = s.ask()
    for r in init:
        store.update(materialize(r, store))
    s.tell({r.id: 0.1 * i for i, r in enumerate(init)})
    return [flat(materialize(r, store)[r.id]) for r in s.ask()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def _changed(name: str) -> float:
    v = getattr(GenomeConfig(**BASE), name)
    return v / 2 if v else 0.5


def test_every_mutation_kind_is_declared():
    assert sorted(MUTATION_FIELDS) == KINDS


def test_mutation_fields_are_exactly_those_one_mutation_depends_on():
    """A float field that changes the children of exactly one mutation is that mutation's field,
    and a declared field changes its own mutation's children and no other's."""
    moves = {name: {k for k in KINDS if not _same(_children(mutation=k), _children(mutation=k, **{name: _changed(name)}))}
             for name in FLOAT_FIELDS}
    only_one = {name: kinds.pop() for name, kinds in moves.items() if len(kinds) == 1}
    assert only_one == {f: kind for kind, fields in MUTATION_FIELDS.items() for f in fields}


@pytest.mark.parametrize("space", ["delta", "ab"])
def test_auto_makes_the_resolved_mutation(space):
    made = resolve_mutation("auto", space)
    auto = _children(mutation="auto", space=space)
    assert _same(auto, _children(mutation=made, space=space))
    assert not any(_same(auto, _children(mutation=k, space=space)) for k in KINDS if k != made)


@pytest.mark.parametrize("kind", KINDS)
def test_an_explicit_mutation_ignores_the_space(kind):
    assert all(resolve_mutation(kind, sp) == kind for sp in ("delta", "ab"))
    assert _same(_children(mutation=kind, space="delta"), _children(mutation=kind, space="ab"))
