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


@pytest.fixture(scope="session")
def shared_scale_run(small_zoo, tmp_path_factory):
    """One small real scale run (tests/_shared_scale.py says what it holds) shared by
    test_report_run_files.py, test_report_noise.py and test_scale_rows.py: ``(run directory, every
    Parquet the cell store wrote as "<folder>/<stem>", in the order written)``. Read only: a test
    that changes a file works on a copy."""
    from evomerge.config import config_from_dict
    from evomerge.pipelines.scale import store as store_mod
    from evomerge.pipelines.scale.driver import run_scale

    from _shared_scale import SHARED_SCALE

    out = tmp_path_factory.mktemp("shared_scale") / "run"
    written: list[str] = []
    real = store_mod.write_parquet_atomic

    def record(path, table, *a, **kw):
        real(path, table, *a, **kw)
        written.append(f"{path.parent.name}/{path.stem}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(store_mod, "write_parquet_atomic", record)
        run_scale(config_from_dict(SHARED_SCALE), out, zoo=small_zoo, progress=False)
    return out, written
