"""A scale run's folder: create it, or reopen it for a run of the same config and the same
input files (resume)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from evomerge.config import EvomergeConfig, dump_config
from evomerge.errors import OutputExistsError

if TYPE_CHECKING:
    from evomerge.pipelines.scale.driver import PoolSpec


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
    where its plan recorded them, the same ``inputs`` (:func:`input_fingerprint`)."""
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
        if inputs is not None:
            check_same_inputs(run_dir / "plan.json", inputs)
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


def input_fingerprint(spec: PoolSpec, task_files: Mapping[str, str | Path]) -> dict[str, Any]:
    """What the run reads, by content (``plan.json``'s ``inputs``): ``{"base": sha256, "experts":
    {name: sha256}, "tasks": {task: sha256}}``. Your own folders and files are hashed as ``evomerge
    merge`` records its inputs (:func:`evomerge.io.sha256_tree` of the files a loader reads, those
    directly in the folder); the built-in zoo's come from its
    manifest, which every file was checked against when the zoo was opened (``ensure_zoo``)."""
    if spec.zoo_root is not None:
        from evomerge.zoo import Zoo

        zoo = Zoo.open(spec.zoo_root)
        listed = zoo.manifest.get("files") or {}

        def digest(path: str | Path) -> str:
            prefix = Path(path).relative_to(zoo.root).as_posix() + "/"
            h = hashlib.sha256()
            for rel in sorted(r for r in listed if r.startswith(prefix)):
                h.update(f"{rel}\0{listed[rel]}\n".encode())
            return h.hexdigest()

        tasks: Mapping[str, str | Path] = {t: zoo.root / "tasks" / t for t in zoo.tasks}
    else:
        from evomerge.io import sha256_tree

        def digest(path: str | Path) -> str:  # what the loaders read: the files directly in a folder
            return sha256_tree(path, recursive=False)

        tasks = task_files
    return {
        "base": digest(spec.base_dir) if spec.base_dir is not None else None,
        "experts": {name: digest(path) for name, path in zip(spec.names, spec.paths)},
        "tasks": {t: digest(path) for t, path in tasks.items()},
    }


def check_same_inputs(path: Path, inputs: dict[str, Any]) -> None:
    """Refuse to resume a run whose saved plan (``path``) recorded other input files (an expert's
    weights changed in place, say): its finished cells would be mixed with the new pool. A plan
    without ``inputs`` (a run from before they were recorded) is not compared."""
    import json

    if not path.is_file():
        return
    old = json.loads(path.read_text()).get("inputs")
    if not isinstance(old, dict):
        return
    changed = [] if old.get("base") == inputs["base"] else ["the base model"]
    for section, what in (("experts", "expert"), ("tasks", "task file")):
        was, now = old.get(section) or {}, inputs[section]
        changed += [f"{what} `{name}`" for name in sorted(set(was) | set(now)) if was.get(name) != now.get(name)]
    if changed:
        raise OutputExistsError(
            f"{path.parent}: the earlier run read other input files ({', '.join(changed[:6])} changed since: "
            "sha256 differs from plan.json); its finished cells would be mixed with the new ones: pass --overwrite "
            "to replace it, or use another --out"
        )
