"""What an evolutionary run leaves on disk: the evaluation history and per-round checkpoints.

Layout of a run directory::

    history/step_000003.parquet   one file per round (append-only; one row per evaluation)
    checkpoints/step_000003/      population.safetensors + state.json, written atomically
    checkpoints/LATEST            name of the newest complete checkpoint

A crash between writing a round's history and its checkpoint leaves history files newer than
the checkpoint; resume deletes them (they are redone identically).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from evomerge.io import atomic_dir, atomic_file, write_json_atomic, write_parquet_atomic

NumpyDict = dict[str, np.ndarray]
_SEP = "|"  # between an individual's key and a tensor name in population.safetensors
_STEP = re.compile(r"^step_(\d{6})(?:\.parquet)?$")


def step_name(step: int) -> str:
    return f"step_{step:06d}"


# ---------------------------------------------------------------- history
def history_table(rows: Sequence[Mapping[str, Any]], tasks: Sequence[str]):
    """A pyarrow table of evaluation rows with a fixed schema (per-task scores as ``val_<task>``)."""
    import pyarrow as pa

    cols: dict[str, Any] = {
        "step": pa.array([int(r["step"]) for r in rows], pa.int64()),
        "island": pa.array([int(r["island"]) for r in rows], pa.int32()),
        "generation": pa.array([int(r["generation"]) for r in rows], pa.int64()),
        "id": pa.array([str(r["id"]) for r in rows], pa.string()),
        "op": pa.array([str(r["op"]) for r in rows], pa.string()),
        "parents": pa.array([list(r["parents"]) for r in rows], pa.list_(pa.string())),
        "weights": pa.array([[float(w) for w in r["weights"]] for r in rows], pa.list_(pa.float64())),
        "seed": pa.array([int(r["seed"]) for r in rows], pa.int64()),
        "params": pa.array([str(r["params"]) for r in rows], pa.string()),
        "fitness": pa.array([float(r["fitness"]) for r in rows], pa.float64()),
    }
    for t in tasks:
        cols[f"val_{t}"] = pa.array([float(r["per_task"].get(t, np.nan)) for r in rows], pa.float64())
    return pa.table(cols)


def write_history_step(run_dir: Path, step: int, table) -> Path:
    path = Path(run_dir) / "history" / f"{step_name(step)}.parquet"
    write_parquet_atomic(path, table)
    return path


def _steps(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    out = []
    for p in folder.iterdir():
        m = _STEP.match(p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def read_history(run_dir: Path):
    """All rounds' rows, in order, as one pyarrow table (None when there are none)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = [pq.read_table(p) for _, p in _steps(Path(run_dir) / "history")]
    return pa.concat_tables(parts) if parts else None


def truncate_history(run_dir: Path, after_step: int) -> int:
    """Delete history files of rounds after ``after_step`` (-1: all); return how many."""
    n = 0
    for s, p in _steps(Path(run_dir) / "history"):
        if s > after_step:
            p.unlink()
            n += 1
    return n


# ---------------------------------------------------------------- checkpoints
def save_checkpoint(run_dir: Path, step: int, weights: Mapping[str, NumpyDict], state: Mapping[str, Any]) -> Path:
    """Population weights (safetensors) and JSON state of round ``step``, then move LATEST."""
    from safetensors.numpy import save_file

    root = Path(run_dir) / "checkpoints"
    path = root / step_name(step)
    flat = {}
    for key, td in weights.items():
        if _SEP in key:
            raise ValueError(f"individual key {key!r} contains {_SEP!r}")
        for name, arr in td.items():
            flat[f"{key}{_SEP}{name}"] = np.ascontiguousarray(arr)
    with atomic_dir(path, overwrite=True) as tmp:
        save_file(flat, str(tmp / "population.safetensors"))
        write_json_atomic(tmp / "state.json", dict(state))
    with atomic_file(root / "LATEST", "w") as fh:
        fh.write(step_name(step) + "\n")
    for s, p in _steps(root):  # keep the newest two
        if s < step - 1:
            shutil.rmtree(p, ignore_errors=True)
    return path


def load_checkpoint(run_dir: Path) -> tuple[int, dict[str, NumpyDict], dict[str, Any]] | None:
    """``(step, weights, state)`` of the newest complete checkpoint, or None."""
    from safetensors.numpy import load_file

    root = Path(run_dir) / "checkpoints"
    latest = root / "LATEST"
    if not latest.is_file():
        return None
    name = latest.read_text().strip()
    m = _STEP.match(name)
    if not m:
        return None
    path = root / name
    flat = load_file(str(path / "population.safetensors"))
    weights: dict[str, NumpyDict] = {}
    for k, arr in flat.items():
        key, name_ = k.split(_SEP, 1)
        weights.setdefault(key, {})[name_] = arr
    state = json.loads((path / "state.json").read_text())
    return int(m.group(1)), weights, state
