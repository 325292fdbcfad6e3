"""Shared fixtures.

``small_zoo``: the built-in zoo's ``small`` profile, built once into the shared cache
(``$EVOMERGE_CACHE`` or ``~/.cache/evomerge``) and reused across test runs and processes
(``ensure_zoo`` holds a file lock while building, so parallel sessions build it once).
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def small_zoo():
    from evomerge.zoo import ensure_zoo

    return ensure_zoo("small")


@pytest.fixture(scope="session")
def small_evaluator(small_zoo):
    """An Evaluator over every task of the small zoo (100 samples per split, token accuracy)."""
    from evomerge.evaluation import Evaluator

    return Evaluator.from_zoo(small_zoo, max_samples=100)


@pytest.fixture(scope="module")
def zoo_experts(small_zoo):
    """``{task: LoRA modules}`` of every small-zoo expert, loaded from disk once per test module."""
    from evomerge.experts.peft_io import load_peft_adapter

    return {t: load_peft_adapter(d).modules for t, d in small_zoo.expert_dirs.items()}
