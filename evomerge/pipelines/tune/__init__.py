"""Optuna studies over any stage of evomerge (merge method and parameters, RHT, search rates, expert count).

``run_tune`` (in :mod:`evomerge.pipelines.tune.run`) is the entry point used by ``evomerge tune`` and
``jobs/tune.py``.
"""

from evomerge.pipelines.tune.space import Dim, apply_overrides, build_space, expert_count, suggest
from evomerge.pipelines.tune.storage import open_storage, resolve_storage_url

__all__ = ["Dim", "apply_overrides", "build_space", "expert_count", "open_storage", "resolve_storage_url", "suggest"]
