"""A scale run's folder: create it, or reopen it for a run of the same config and the same
input files (resume)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from evomerge.config import EvomergeConfig, dump_config
from evomerge.errors import OutputExistsError
from evomerge.pipelines.fingerprint import check_unchanged

# Keys that only change how far a run goes: a run may be continued with other values (e.g.
# `--no-stop` on a run that stopped at n_max computes just the extra k).
EXTENDABLE = ("stop", "k_max")


def _comparable(cfg: EvomergeConfig) -> dict[str, Any]:
    data = cfg.model_dump(mode="json", exclude={"ray"})  # where it runs does not change results
    for key in EXTENDABLE:
        data["scale"].pop(key)
    return data


def prepare_run_dir(run_dir: Path, cfg: EvomergeConfig, overwrite: bool, inputs: dict[str, Any] | None = None) -> bool:
    """Create or reopen ``run_dir``; True when it holds an earlier run of the same config and,
    where its plan recorded them, the same ``inputs``
    (:func:`evomerge.pipelines.fingerprint.input_fingerprint`). A run stopped before its
    ``plan.json`` was written is started again (False)."""
    saved = run_dir / "config.yaml"
    if run_dir.exists() and overwrite:
        shutil.rmtree(run_dir)
    elif saved.is_file():
        from evomerge.config import load_config

        old = load_config(saved)
        if _comparable(old) != _comparable(cfg):
            diff = sorted(_diff_keys(_comparable(old), _comparable(cfg)))
            raise OutputExistsError(
                f"{run_dir}: holds a scale run with a different config (differs in: {', '.join(diff[:8])}); "
                "pass --overwrite to replace it, or use another --out"
            )
        if not (run_dir / "plan.json").is_file():
            # stopped before its plan: no cell ran, and what it wrote (the experts' own scores, the
            # pool analysis) came from the input files as they were then, which nothing recorded
            # to compare: those are removed and it starts again, as a fresh run
            from evomerge.pipelines.scale.gains import FILE as GAINS

            (run_dir / GAINS).unlink(missing_ok=True)
            shutil.rmtree(run_dir / "analysis", ignore_errors=True)
            dump_config(cfg, saved)
            return False
        check_unchanged(run_dir / "plan.json", inputs, where=str(run_dir), error=OutputExistsError,
                        advice="its finished cells would be mixed with the new ones: pass --overwrite to replace it, "
                               "or use another --out")
        dump_config(cfg, saved)  # it may extend the earlier run (EXTENDABLE keys)
        return True
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise OutputExistsError(f"{run_dir}: exists and is not a scale run; pass --overwrite to replace it")
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, saved)
    return False


def discard_unstarted(run_dir: Path, keep_folder: bool = False) -> None:
    """Remove what a new run wrote when it holds no finished cell (the run was refused): its
    config, timings and pool analysis would only block the corrected run. ``keep_folder``: the
    folder was there (empty) before the run, so it stays, empty."""
    if any((run_dir / "cells").glob("*.parquet")):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    if keep_folder:
        run_dir.mkdir(parents=True, exist_ok=True)


def _diff_keys(a: Any, b: Any, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for k in set(a) | set(b):
            out |= _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}


def check_same_plan(path: Path, plan: dict[str, Any]) -> None:
    """Refuse to resume a run whose saved plan (``path``) used another pool or expert order."""
    import json

    if not path.is_file():
        return
    old = json.loads(path.read_text())
    for key in ("experts", "orders"):
        if old.get(key) != plan[key]:
            raise OutputExistsError(
                f"{path.parent}: the earlier run used a different pool or plan (`{key}` differs: e.g. another zoo); "
                "pass --overwrite to replace it, or use another --out"
            )
