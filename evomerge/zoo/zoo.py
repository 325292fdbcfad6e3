"""A built zoo on disk: locating, validating and caching it.

Layout of a zoo folder::

    zoo.json                       manifest (format version, profile, seed, tasks, scores)
    base/                          HF model folder + tokenizer (save_pretrained)
    experts/<task>/                peft LoRA adapter folder (save_pretrained)
    tasks/<task>/<split>.parquet   prompt/answer columns; splits train, validation, test
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from evomerge.errors import ExpertLoadError

FORMAT_VERSION = 1
MANIFEST = "zoo.json"
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Zoo:
    """A validated zoo folder (see module docstring for the layout)."""

    root: Path
    manifest: dict[str, Any] = field(repr=False)

    @property
    def base_dir(self) -> Path:
        return self.root / "base"

    @property
    def tasks(self) -> list[str]:
        return [t["name"] for t in self.manifest["tasks"]]

    @property
    def expert_dirs(self) -> dict[str, Path]:
        return {t: self.root / "experts" / t for t in self.tasks}

    @property
    def related_pairs(self) -> list[tuple[str, str]]:
        return [tuple(p) for p in self.manifest["related_pairs"]]  # type: ignore[misc]

    @property
    def domains(self) -> dict[str, str]:
        return {t["name"]: t["domain"] for t in self.manifest["tasks"]}

    @property
    def profile(self) -> str:
        return str(self.manifest["profile"])

    @property
    def seed(self) -> int:
        return int(self.manifest["seed"])

    def is_current(self) -> bool:
        """Whether this evomerge would build the same zoo (same profile recipe)."""
        from evomerge.zoo.model import PROFILES, recipe_hash

        prof = PROFILES.get(self.profile)
        return prof is not None and self.manifest.get("recipe") == recipe_hash(prof)

    def task_files(self, task: str) -> dict[str, Path]:
        if task not in self.tasks:
            raise ExpertLoadError(f"{self.root}: zoo has no task `{task}`; tasks: {', '.join(self.tasks)}")
        return {s: self.root / "tasks" / task / f"{s}.parquet" for s in SPLITS}

    def load_tasks(self, tasks: list[str] | None = None, splits=("validation", "test"), limit: int | None = None):
        """``{task: {split: datasets.Dataset}}`` for the Evaluator."""
        from evomerge.data import load_examples

        names = list(tasks) if tasks is not None else self.tasks
        return {t: {s: load_examples(self.task_files(t)[s], limit=limit) for s in splits} for t in names}

    @classmethod
    def open(cls, root: str | os.PathLike) -> "Zoo":
        """Open a zoo folder; raise :class:`ExpertLoadError` naming what is missing or stale."""
        root = Path(root)
        mpath = root / MANIFEST
        if not mpath.is_file():
            raise ExpertLoadError(f"{root}: not a zoo folder ({MANIFEST} missing); build one with `evomerge zoo build`")
        try:
            manifest = json.loads(mpath.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ExpertLoadError(f"{mpath}: unreadable zoo manifest ({err})") from None
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        if version != FORMAT_VERSION:
            raise ExpertLoadError(
                f"{mpath}: zoo format version {version!r}, this evomerge reads version {FORMAT_VERSION}; "
                "rebuild it with `evomerge zoo build --overwrite`"
            )
        zoo = cls(root=root, manifest=manifest)
        missing = zoo.missing_files()
        if missing:
            raise ExpertLoadError(f"{root}: incomplete zoo, missing {', '.join(str(m) for m in missing[:5])}")
        return zoo

    def missing_files(self) -> list[Path]:
        need = [self.base_dir / "config.json", self.base_dir / "tokenizer.json"]
        for t in self.tasks:
            need += [self.expert_dirs[t] / "adapter_config.json", self.expert_dirs[t] / "adapter_model.safetensors"]
            need += list(self.task_files(t).values())
        return [p for p in need if not p.is_file()]


def default_cache_dir() -> Path:
    """``$EVOMERGE_CACHE`` or ``~/.cache/evomerge``."""
    env = os.environ.get("EVOMERGE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "evomerge"


def default_zoo_root(profile: str, seed: int = 0) -> Path:
    suffix = "" if seed == 0 else f"-s{seed}"
    return default_cache_dir() / f"zoo-{profile}-v{FORMAT_VERSION}{suffix}"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if needed), so parallel processes build once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def ensure_zoo(profile: str = "default", root: str | os.PathLike | None = None, *, seed: int = 0,
               progress: bool = False) -> Zoo:
    """Return the zoo at ``root`` (default: the user cache), building it first if needed.

    The default root is ``default_zoo_root(profile, seed)`` (profile and seed in the name). A
    valid zoo found at an explicit ``root`` is used whatever its profile; a zoo of another
    format version or an incomplete one is rebuilt; a non-empty folder that is not a zoo
    is refused. A file lock beside ``root`` makes parallel callers build only once.
    """
    from evomerge.zoo.build import build_zoo
    from evomerge.zoo.model import PROFILES

    if profile not in PROFILES:
        from evomerge.errors import ConfigError

        raise ConfigError(f"zoo profile must be one of {sorted(PROFILES)}. Got {profile!r} instead.")
    explicit = root is not None
    root = Path(root) if root is not None else default_zoo_root(profile, seed)
    with file_lock(root.parent / f".{root.name}.lock"):
        try:
            zoo = Zoo.open(root)
            if explicit or (zoo.profile == profile and zoo.seed == seed and zoo.is_current()):
                return zoo
        except ExpertLoadError:
            if root.exists() and any(root.iterdir()) and not (root / MANIFEST).exists():
                raise ExpertLoadError(f"{root}: folder exists and is not a zoo; refusing to overwrite it") from None
        return build_zoo(root, profile=profile, seed=seed, overwrite=True, progress=progress)
