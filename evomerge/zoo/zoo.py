"""A built zoo on disk: locating, validating (sha256 manifest) and caching it.

Layout of a zoo folder::

    zoo.json                       manifest (format version, profile, seed, tasks, scores,
                                   correlations, sha256 of every other file)
    base/                          HF model folder + tokenizer (save_pretrained)
    experts/<task>/                peft LoRA adapter folder (save_pretrained)
    full/<task>/                   full fine-tune: HF model folder (safetensors), if built
    tasks/<task>/<split>.parquet   prompt/answer columns; splits train, validation, test

The default and small zoos ship inside the package (``evomerge/zoo/shipped/<profile>``), so
they are used at once, with the same files and scores on every machine.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evomerge.errors import ExpertLoadError
from evomerge.io import file_lock, path_relation, sha256_file

FORMAT_VERSION = 2
MANIFEST = "zoo.json"
SPLITS = ("train", "validation", "test")
SHIPPED = Path(__file__).resolve().parent / "shipped"


def _fix(root: Path) -> str:
    return f"rebuild it with `evomerge zoo build --out {root} --overwrite` (or use another folder)"


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
    def full_dirs(self) -> dict[str, Path]:
        """``{task: full fine-tune folder}``; empty when the zoo was built without them."""
        return {t: self.root / "full" / t for t in self.tasks} if self.manifest.get("full_experts") else {}

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
        from evomerge.evaluation.task_data import load_examples

        names = list(tasks) if tasks is not None else self.tasks
        return {t: {s: load_examples(self.task_files(t)[s], limit=limit) for s in splits} for t in names}

    @classmethod
    def open(cls, root: str | os.PathLike, verify: bool = False) -> "Zoo":
        """Open a zoo folder; raise :class:`ExpertLoadError` naming what is missing, stale or
        (``verify``) not what the manifest's sha256 says."""
        root = Path(root)
        mpath = root / MANIFEST
        if not root.exists():
            raise ExpertLoadError(f"{root}: folder does not exist (not a zoo folder); build one there with "
                                  f"`evomerge zoo build --out {root}`")
        if not root.is_dir():
            raise ExpertLoadError(f"{root}: is a file, not a zoo folder")
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
                + _fix(root)
            )
        zoo = cls(root=root, manifest=manifest)
        missing = zoo.missing_files()
        if missing:
            raise ExpertLoadError(
                f"{root}: incomplete zoo, missing {', '.join(str(m) for m in missing[:5])}; " + _fix(root)
            )
        if verify:
            bad = zoo.verify()
            if bad:
                raise ExpertLoadError(f"{bad[0]}; {len(bad)} file(s) fail the manifest of {mpath}; " + _fix(root))
        return zoo

    def verify(self) -> list[str]:
        """Problems found checking every file against the manifest's sha256 (empty: all good)."""
        listed = self.manifest.get("files")
        if not isinstance(listed, dict) or not listed:
            return [f"{self.root / MANIFEST}: no `files` list with sha256 (written by an older evomerge)"]
        out = []
        for rel, digest in sorted(listed.items()):
            path = self.root / rel
            if not path.is_file():
                out.append(f"{path}: missing")
            elif sha256_file(path) != digest:
                out.append(f"{path}: sha256 differs from the manifest (file changed)")
        out += [f"{self.root / rel}: not in the manifest" for rel in sorted(set(file_hashes(self.root, hash=False)) - set(listed))]
        return out

    def missing_files(self) -> list[Path]:
        need = [self.base_dir / "config.json", self.base_dir / "tokenizer.json"]
        for t in self.tasks:
            need += [self.expert_dirs[t] / "adapter_config.json", self.expert_dirs[t] / "adapter_model.safetensors"]
            need += list(self.task_files(t).values())
        for d in self.full_dirs.values():
            need += [d / "config.json", d / "model.safetensors"]
        return [p for p in need if not p.is_file()]


def file_hashes(root: str | os.PathLike, hash: bool = True) -> dict[str, str]:
    """``{relative path: sha256}`` of every file of a zoo folder but the manifest (hidden files skipped)."""
    root = Path(root)
    out = {}
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = f.relative_to(root)
        if rel.as_posix() == MANIFEST or any(part.startswith(".") for part in rel.parts):
            continue
        out[rel.as_posix()] = sha256_file(f) if hash else ""
    return out


def default_cache_dir() -> Path:
    """``$EVOMERGE_CACHE`` or ``~/.cache/evomerge``."""
    env = os.environ.get("EVOMERGE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "evomerge"


def default_zoo_root(profile: str, seed: int = 0) -> Path:
    """Where ``zoo build`` without ``--out`` (and ``ensure_zoo`` for a profile not shipped) puts a zoo."""
    suffix = "" if seed == 0 else f"-s{seed}"
    return default_cache_dir() / f"zoo-{profile}-v{FORMAT_VERSION}{suffix}"


def shipped_root(profile: str, seed: int = 0) -> Path | None:
    """The zoo shipped inside the package for ``profile`` (seed 0 only), or None."""
    root = SHIPPED / profile
    return root if seed == 0 and (root / MANIFEST).is_file() else None


def zoo_root_in_use(profile: str, seed: int = 0) -> Path:
    """The folder ``ensure_zoo(profile)`` uses with no root given: the shipped zoo, else the cache."""
    return shipped_root(profile, seed) or default_zoo_root(profile, seed)


def shipped_refusal(out: str | os.PathLike) -> str | None:
    """Why a zoo must not be built at ``out`` because that would write into, over or around the
    zoos shipped inside the package (``evomerge/zoo/shipped``); None when it may be."""
    path, shipped = Path(out).expanduser().resolve(), SHIPPED.resolve()
    how = path_relation(path, shipped)
    if how is None:
        return None
    return (f"{out}: {how} the folder of the zoos shipped with evomerge ({shipped}); refusing to build there "
            "(every --small and default command reads them); pick another --out")


def build_out_refusal(out: str | os.PathLike, profile: str, seed: int = 0) -> str | None:
    """Why ``zoo build --out out`` (of ``profile``, ``seed``) must not write there, or None.

    Refused: the package's shipped zoos (:func:`shipped_refusal`); the zoo cache
    (:func:`default_cache_dir`) itself or a folder holding it; a cache zoo folder
    (``zoo-*``) or a folder inside one, unless it is the one this build would use without
    ``--out`` (:func:`default_zoo_root` of its own profile and seed): the cache's other zoos are
    what ``ensure_zoo`` opens for their profiles."""
    why = shipped_refusal(out)
    if why is not None:
        return why
    path, cache = Path(out).expanduser().resolve(), default_cache_dir().expanduser().resolve()
    natural = default_zoo_root(profile, seed).expanduser().resolve()
    if path == natural:
        return None
    how = path_relation(path, cache)
    if how in ("is", "contains"):
        return f"{out}: {how} the zoo cache ({cache}); refusing to build there; pick another --out"
    if how == "is inside":
        top = cache / path.relative_to(cache).parts[0]
        if top.name.startswith("zoo-"):
            return (f"{out}: {'is' if path == top else 'is inside'} the cached zoo {top}, which is not where a "
                    f"`{profile}` zoo with seed {seed} is cached ({natural}); refusing to build there; "
                    "pick another --out (or leave --out out)")
    return None


def ensure_zoo(profile: str = "default", root: str | os.PathLike | None = None, *, seed: int = 0,
               progress: bool = False) -> Zoo:
    """Return the zoo for ``profile``: the shipped one, an explicit ``root``, or a cached build.

    * ``root`` None, a shipped zoo for ``profile`` (seed 0): it is used at once, after checking
      every file against its manifest (a failing file raises, naming it).
    * ``root`` given: a valid zoo there is used whatever its profile; a missing or empty folder
      is built; anything else (not a zoo, another format version, incomplete, files that fail
      the manifest) raises :class:`ExpertLoadError` naming the problem and offering
      ``evomerge zoo build``: a user's folder is never rebuilt silently.
    * otherwise the user cache (``default_zoo_root``) is used, rebuilt when stale (it is ours).

    A file lock beside the folder makes parallel callers build only once.
    """
    from evomerge.zoo.model import PROFILES

    if profile not in PROFILES:
        from evomerge.errors import ConfigError

        raise ConfigError(f"zoo profile must be one of {sorted(PROFILES)}. Got {profile!r} instead.")
    if root is None:
        shipped = shipped_root(profile, seed)
        if shipped is not None:
            return Zoo.open(shipped, verify=True)
    explicit = root is not None
    root = Path(root) if root is not None else default_zoo_root(profile, seed)
    if explicit and (root / MANIFEST).is_file():  # written last, atomically: no lock needed to read
        return Zoo.open(root, verify=True)
    with file_lock(root.parent / f".{root.name}.build-lock"):
        if explicit and root.exists() and (not root.is_dir() or any(root.iterdir())):
            if not (root / MANIFEST).exists():
                raise ExpertLoadError(f"{root}: folder exists and is not a zoo; refusing to overwrite it")
            return Zoo.open(root, verify=True)
        if not explicit:
            try:
                zoo = Zoo.open(root, verify=True)
                if zoo.profile == profile and zoo.seed == seed and zoo.is_current():
                    return zoo
            except ExpertLoadError:
                pass
        from evomerge.zoo.build import build_zoo

        return build_zoo(root, profile=profile, seed=seed, overwrite=True, progress=progress)
