"""Checks of a LoRA adapter against its own config and the base (peft's semantics for
``target_modules`` / ``exclude_modules``, what ``base_model_name_or_path`` names), and the
comparison of two adapters' factors: what :func:`evomerge.experts.pool.load_pool` runs on a
LoRA pool before any merge work."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from evomerge.errors import ExpertLoadError
from evomerge.experts.checkpoint_io import ARCH_FIELDS, CheckpointReader, read_config
from evomerge.experts.peft_io import PeftAdapter


def same_lora(a: PeftAdapter, b: PeftAdapter) -> bool:
    """The two adapters have the same modules with equal factors, scales and layout."""
    if set(a.modules) != set(b.modules):
        return False
    for k, m in a.modules.items():
        o = b.modules[k]
        if m.scale != o.scale or m.fan_in_fan_out != o.fan_in_fan_out or m.A.shape != o.A.shape or m.B.shape != o.B.shape:
            return False
        if not (torch.equal(m.A, o.A) and torch.equal(m.B, o.B)):
            return False
    return True


def matches_modules(spec: Any, module: str) -> bool:
    """peft's rule for ``target_modules`` / ``exclude_modules``: a string is a regex that must match
    the whole module name; a list names modules exactly or by their last dotted parts."""
    if isinstance(spec, str):
        return re.fullmatch(spec, module) is not None
    return module in spec or any(module.endswith(f".{t}") for t in spec)


def check_target_modules(ad: PeftAdapter) -> None:
    """The modules the adapter's weights hold must be the ones its ``adapter_config.json`` targets
    (``target_modules``: a list of names / name suffixes or a regex, peft's semantics) and not
    ones it excludes (``exclude_modules``). ``all-linear`` and ``layers_to_transform`` are not checked."""
    cfg_file = ad.path / "adapter_config.json"
    targets = ad.config.get("target_modules")
    excluded = ad.config.get("exclude_modules")
    modules = sorted(k[: -len(".weight")] for k in ad.modules)
    for key, spec in (("target_modules", targets), ("exclude_modules", excluded)):
        if isinstance(spec, str):
            try:
                re.compile(spec)
            except re.error as err:
                raise ExpertLoadError(f"{cfg_file}: {key} {spec!r} is not a valid regex ({err})") from None
        elif spec is not None and not (isinstance(spec, (list, tuple)) and all(isinstance(t, str) for t in spec)):
            raise ExpertLoadError(f"{cfg_file}: {key} must be a list of module names or a regex string. Got {spec!r} instead.")
    if targets is not None and targets != "all-linear":
        stray = [m for m in modules if not matches_modules(targets, m)]
        if stray:
            raise ExpertLoadError(
                f"{cfg_file}: target_modules {targets!r} does not name {len(stray)} of the {len(modules)} modules whose "
                f"LoRA factors {ad.weights_file.name} holds (e.g. {stray[:3]}); the config and the weights disagree"
            )
    if excluded:
        hit = [m for m in modules if matches_modules(excluded, m)]
        if hit:
            raise ExpertLoadError(
                f"{cfg_file}: exclude_modules {excluded!r} excludes {len(hit)} module(s) whose LoRA factors "
                f"{ad.weights_file.name} holds (e.g. {hit[:3]}); the config and the weights disagree"
            )


def is_relative_path(name: Any) -> bool:
    """``name`` is written as a path relative to some folder (``./x``, ``../x``)."""
    return isinstance(name, str) and (name in (".", "..") or name.startswith(("./", "../")))


def base_identity(name: Any) -> Any:
    """What an adapter's ``base_model_name_or_path`` names, for comparing two adapters' bases: a
    local folder (a relative path read from the working folder, as peft and transformers read it
    when they load the adapter's base) is its resolved path, so a trailing slash, ``..`` or a link
    make no difference; an absolute path that is no folder here (trained on another machine) is
    normalised as text (``/x/base/`` is ``/x/base``); anything else (a hub id, a relative path that
    names nothing here) is compared as written."""
    if not isinstance(name, str) or not name:
        return name
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.is_absolute():
        return Path(os.path.normpath(path))
    return name


def check_adapter_base(ad: PeftAdapter, base_path: Path, base_reader: CheckpointReader) -> None:
    """The adapter's own claims about its base must fit ``--base``: a local ``base_model_name_or_path``
    of another architecture, or a ``target_modules`` entry naming no module of the base, is refused.
    (A hub name cannot be checked offline; the tensor shapes are checked by the caller.)"""
    cfg_file = ad.path / "adapter_config.json"
    name = ad.config.get("base_model_name_or_path")
    named = Path(str(name)).expanduser() if name else None
    if named is not None and named.is_dir() and named.resolve() != base_path.resolve() and (named / "config.json").is_file():
        theirs, ours = read_config(named), read_config(base_path)
        for f in ARCH_FIELDS:
            if (f in theirs or f in ours) and theirs.get(f) != ours.get(f):
                raise ExpertLoadError(
                    f"{cfg_file}: base_model_name_or_path {name!r} is another model than --base {base_path} "
                    f"(`{f}`: {theirs.get(f)!r} there, {ours.get(f)!r} in the base)"
                )
    modules = [k[: -len(".weight")] for k in base_reader.keys() if k.endswith(".weight")]
    targets = ad.config.get("target_modules")
    if isinstance(targets, str):
        try:
            matched = any(re.fullmatch(targets, m) for m in modules)
        except re.error as err:
            raise ExpertLoadError(f"{cfg_file}: target_modules {targets!r} is not a valid regex ({err})") from None
        if not matched:
            raise ExpertLoadError(f"{cfg_file}: target_modules {targets!r} matches no module of the base {base_path}")
    elif isinstance(targets, (list, tuple)):
        for t in targets:
            if not any(m == t or m.endswith(f".{t}") for m in modules):
                raise ExpertLoadError(f"{cfg_file}: target_modules entry {t!r} names no module of the base {base_path}")
