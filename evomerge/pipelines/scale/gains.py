"""Each expert alone, and the base model, on validation: what the `gain` and correlation
orders need (an expert's own-task gain over the base) and the online rule's scale.

Measured once per run directory in the driver's process (``expert_gains.json``), before the
plan is made, so a resumed run reuses the same numbers and the same order.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from evomerge.io import write_json_atomic

FILE = "expert_gains.json"


def measure(worker, names: list[str], tasks: list[str | None]) -> dict[str, Any]:
    """``{"base": {task: score}, "experts": {name: {task: score}}, "gain": {name: own-task gain}}``
    on validation (metric and cross-entropy). ``worker`` is a :class:`~evomerge.pipelines.scale.work.CellWorker`."""
    base = worker.evaluate({}, "validation")
    experts = {name: worker.evaluate(worker.expert_vector(i), "validation") for i, name in enumerate(names)}
    gain = {}
    for name, task in zip(names, tasks):
        if task is None or task not in base:
            gain[name] = float("nan")
        else:
            gain[name] = experts[name][task][0] - base[task][0]
    return {
        "base": {t: v[0] for t, v in base.items()},
        "base_cross_entropy": {t: v[1] for t, v in base.items()},
        "experts": {n: {t: v[0] for t, v in s.items()} for n, s in experts.items()},
        "gain": gain,
    }


def load_or_measure(run_dir: Path, make_worker, names: list[str], tasks: list[str | None]) -> dict[str, Any]:
    path = Path(run_dir) / FILE
    if path.is_file():
        import json

        data = json.loads(path.read_text())
        if sorted(data.get("gain", {})) == sorted(names):  # the file's keys are sorted
            return _floats(data)
    data = measure(make_worker(), names, tasks)
    write_json_atomic(path, _json(data))
    return data


def _json(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json(v) for k, v in obj.items()}
    return obj


def _floats(obj):
    if obj is None:
        return float("nan")
    if isinstance(obj, dict):
        return {k: _floats(v) for k, v in obj.items()}
    return obj
