"""What a run reads, by content: the sha256 of its base, experts and task files, recorded with
the run (scale's ``plan.json``, evolve's ``run.json``) so that a resume over changed files is
refused instead of mixing results of two pools."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping


def input_fingerprint(spec, task_files: Mapping[str, str | Path]) -> dict[str, Any]:
    """What the run reads, by content (``plan.json``'s ``inputs``; ``spec``: a scale ``PoolSpec``
    or anything with its ``zoo_root``, ``base_dir``, ``names`` and ``paths``): ``{"base": sha256, "experts":
    {name: sha256}, "tasks": {task: sha256}}``. Your own folders and files are hashed as ``evomerge
    merge`` records its inputs (:func:`evomerge.io.sha256_tree` of the files a loader reads, those
    directly in the folder); a zoo's come from its manifest, after every file is checked against it
    (so a zoo folder changed in place is refused, naming the file)."""
    if spec.zoo_root is not None:
        from evomerge.zoo import Zoo

        zoo = Zoo.open(spec.zoo_root, verify=True)  # (a zoo given as a folder is opened unverified)
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


def changed_inputs(old: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """What differs between two fingerprints, in words (``expert `cap```, ``the base model``)."""
    changed = [] if old.get("base") == now.get("base") else ["the base model"]
    for section, what in (("experts", "expert"), ("tasks", "task file")):
        was, new = old.get(section) or {}, now.get(section) or {}
        changed += [f"{what} `{name}`" for name in sorted(set(was) | set(new)) if was.get(name) != new.get(name)]
    return changed


def check_unchanged(record: Path, now: Mapping[str, Any] | None, *, where: str, error: type[Exception],
                    advice: str) -> None:
    """Refuse to continue a run whose ``record`` (its ``plan.json`` / ``run.json``) holds ``inputs``
    other than ``now``: its results were computed on the old files. A record without ``inputs``
    (a run from before they were recorded), or no fingerprint now, is not compared."""
    if now is None or not record.is_file():
        return
    try:
        old = json.loads(record.read_text()).get("inputs")
    except (OSError, ValueError, AttributeError):  # (a damaged record is the caller's own refusal)
        return
    changed = changed_inputs(old, now) if isinstance(old, dict) else []
    if changed:
        raise error(f"{where}: the earlier run read other input files ({', '.join(changed[:6])} changed since: "
                    f"sha256 differs from {record.name}); {advice}")


def config_fingerprint(cfg) -> dict[str, Any] | None:
    """:func:`input_fingerprint` of the config's own experts, base and task files (None for the
    built-in zoo, whose folder is checked against its manifest whenever it is opened)."""
    specs = cfg.experts.experts
    if not specs:
        return None
    pool = SimpleNamespace(zoo_root=None, base_dir=cfg.experts.base, paths=[Path(s.path) for s in specs],
                           names=[s.label for s in specs])
    return input_fingerprint(pool, cfg.evaluation.task_files)
