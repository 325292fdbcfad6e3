"""Checks of a LoRA adapter against its own config and the base (peft's semantics for
``target_modules`` / ``exclude_modules``, what ``base_model_name_or_path`` names), and the
comparison of two adapters' factors: what :func:`evomerge.experts.pool.load_pool` runs on a
LoRA pool before any merge work."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

import torch

from evomerge.errors import ExpertLoadError
from evomerge.experts.checkpoint_io import ARCH_FIELDS, CheckpointReader, read_config
from evomerge.experts.peft_io import PeftAdapter
from evomerge.experts.types import LoraModule


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


_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9_.-]+)?")


def known_base_name(name: Any) -> Any:
    """``base_model_name_or_path`` as a claim: ``None`` when it names nothing (missing, null, an empty
    or blank string: the base is unknown, and the adapter defers to the others and to ``--base``)."""
    if name is None or (isinstance(name, str) and not name.strip()):
        return None
    return name


def is_hub_id(name: Any) -> bool:
    """``name`` has the form of a hub id (``name`` or ``org/name``), which a relative path may have too."""
    return (isinstance(name, str) and _HUB_ID.fullmatch(name) is not None and ".." not in name
            and "--" not in name and not name.endswith("."))


def is_relative_name(name: Any) -> bool:
    """A name that peft and transformers read as a path relative to the working folder when it is a
    folder there: any string that is not an absolute path (``./x``, ``../x``, ``a/b/c``; and ``base``
    or ``org/name`` too, which are read as hub ids only when no such folder is there)."""
    return isinstance(name, str) and bool(name.strip()) and not Path(name).expanduser().is_absolute()


def base_identity(name: Any) -> Any:
    """What an adapter's ``base_model_name_or_path`` names, for comparing two adapters' bases: a
    local folder (a relative path read from the working folder, as peft and transformers read it
    when they load the adapter's base) is its resolved path, so a trailing slash, ``..`` or a link
    make no difference; an absolute path that is no folder here (trained on another machine) is
    normalised as text (``/x/base/`` is ``/x/base``); anything else (a hub id, a relative path that
    names nothing here) is compared as written. An unknown name (:func:`known_base_name`) is None."""
    name = known_base_name(name)
    if not isinstance(name, str):
        return name
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.is_absolute():
        return Path(os.path.normpath(path))
    return name


def _near_adapter(name: str, adapter_dir: Path) -> Path | None:
    """The model folder ``name`` names relative to the adapter's folder or one of its parents (where
    a training run that wrote a relative name may have run), if there is one."""
    here = Path(adapter_dir).resolve()
    for folder in (here, *here.parents):
        cand = folder / name
        if (cand / "config.json").is_file():
            return folder
    return None


def where_name_points(name: Any, adapter_dir: Path) -> str:
    """How a relative ``base_model_name_or_path`` is read, for an error message: from the working
    folder (as peft and transformers read it), what it names there, and the folder near the adapter
    it would name if the adapter was trained from there. Empty for other names."""
    if not is_relative_name(name):
        return ""
    cwd = Path.cwd()
    path = Path(name).expanduser()
    if path.is_dir():
        return f"{name!r} is read from the working folder {cwd}: {path.resolve()}"
    near = _near_adapter(name, adapter_dir)
    if is_hub_id(name):
        if near is None:
            return ""  # a hub id, as far as anything here tells
        text = f"{name!r} is no folder in the working folder {cwd}, so it is read as a hub id"
    else:
        text = f"a relative path is read from the working folder ({cwd}), where {name!r} is no folder"
    if near is not None:
        text += (f"; read from {near} (the adapter's folder or one above it) it is the model folder "
                 f"{(near / name).resolve()}: run evomerge from {near}, or write that absolute path into "
                 f"{Path(adapter_dir) / 'adapter_config.json'}")
    return text


def check_one_base(adapters: Sequence[PeftAdapter]) -> None:
    """The adapters must name one base (:func:`base_identity`); an adapter that names none defers to
    the others. Two different names are refused naming both ``adapter_config.json`` files."""
    named = [(ad, ad.config.get("base_model_name_or_path")) for ad in adapters]
    named = [(ad, n) for ad, n in named if known_base_name(n) is not None]
    if not named:
        return
    first, base_name = named[0]
    for ad, other in named[1:]:
        if base_identity(other) != base_identity(base_name):
            hints = [h for h in (where_name_points(other, ad.path), where_name_points(base_name, first.path)) if h]
            hint = "".join(f"; {h}" for h in hints)
            raise ExpertLoadError(
                f"{ad.path / 'adapter_config.json'}: base_model_name_or_path {other!r} differs from "
                f"{base_name!r} in {first.path / 'adapter_config.json'} (experts must share one base model{hint})"
            )


def delta_shape(m: LoraModule) -> tuple[int, ...]:
    """The shape of the base weight a LoRA module adapts."""
    out, inp = int(m.B.shape[0]), int(m.A.shape[1])
    return (inp, out) if m.fan_in_fan_out else (out, inp)


def _other_model(named: Path, ours: CheckpointReader) -> str | None:
    """Why the checkpoint folder ``named`` holds another model than the base ``ours`` (same architecture
    fields assumed), from the tensors both hold: another shape, or other values in the first or the
    last row (a copy of the base matches, also one saved in another dtype, compared at the lower
    precision; a fine-tune or a freshly initialised model differs in nearly every tensor). None
    when they agree or ``named`` holds no weights this can read (the shapes are checked anyway)."""
    try:
        theirs = CheckpointReader(named, allow_bin=ours.allow_bin)
        keys = sorted(set(theirs.keys()) & set(ours.keys()))  # a tied lm_head saved or not is no other model
        for k in keys:
            if tuple(theirs.shape(k)) != tuple(ours.shape(k)):
                return f"tensor `{k}`: shape {tuple(theirs.shape(k))} there, {tuple(ours.shape(k))} in the base"
        for k in keys:
            a, b = theirs.edge_rows(k), ours.edge_rows(k)
            if a.dtype != b.dtype:  # compared at the lower precision (of two 16-bit types: bfloat16's)
                low = min((a.dtype, b.dtype),
                          key=lambda d: (torch.empty((), dtype=d).element_size(), d != torch.bfloat16))
                a, b = a.to(low), b.to(low)
            if not torch.equal(a, b):
                return f"tensor `{k}` holds other values"
    except ExpertLoadError:
        return None
    return None


def check_adapter_base(ad: PeftAdapter, base_path: Path, base_reader: CheckpointReader,
                       compared: dict[Path, str | None] | None = None) -> None:
    """The adapter's own claims about its base must fit ``--base``: a local ``base_model_name_or_path``
    that holds another model (other architecture fields, tensors or weights; a copy of the base
    passes), or a ``target_modules`` entry naming no module of the base, is refused; then every
    weight it adapts must be one of the base's, of the shape its factors make. (A hub name cannot be
    checked offline; an unknown name defers to ``--base``.) ``compared``: the folders already
    compared with the base (folder -> :func:`_other_model`'s answer), so adapters naming one
    folder read its tensors once."""
    cfg_file = ad.path / "adapter_config.json"
    name = known_base_name(ad.config.get("base_model_name_or_path"))
    named = Path(name).expanduser() if isinstance(name, str) else None
    if named is not None and named.is_dir() and named.resolve() != base_path.resolve() and (named / "config.json").is_file():
        where = where_name_points(name, ad.path)
        said = f"{name!r} ({where})" if where else repr(name)
        theirs, ours = read_config(named), read_config(base_path)
        for f in ARCH_FIELDS:
            if (f in theirs or f in ours) and theirs.get(f) != ours.get(f):
                raise ExpertLoadError(
                    f"{cfg_file}: base_model_name_or_path {said} is another model than --base {base_path} "
                    f"(`{f}`: {theirs.get(f)!r} there, {ours.get(f)!r} in the base)"
                )
        compared = {} if compared is None else compared
        if named.resolve() not in compared:
            compared[named.resolve()] = _other_model(named, base_reader)
        why = compared[named.resolve()]
        if why is not None:
            raise ExpertLoadError(
                f"{cfg_file}: base_model_name_or_path {said} is another model than --base {base_path} ({why}; "
                "the adapter was trained on that model: give it as --base, or merge adapters of --base)"
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
    for k, m in sorted(ad.modules.items()):
        if k not in base_reader:
            raise ExpertLoadError(f"{ad.weights_file}: adapts `{k}`, which the base {base_path} does not have")
        if tuple(base_reader.shape(k)) != delta_shape(m):
            raise ExpertLoadError(
                f"{ad.weights_file}: `{k}` adapts shape {delta_shape(m)} but the base {base_path} has "
                f"{tuple(base_reader.shape(k))} (different base model?)"
            )


def check_lora_bases(
    adapters: Sequence[PeftAdapter], base_path: Path | None = None, base_reader: CheckpointReader | None = None
) -> None:
    """The base rule of every command that reads adapters (``merge``, ``analyze``, ``scale``,
    ``evolve`` through :func:`evomerge.experts.pool.load_pool`, and ``evaluate``): with ``--base``,
    each adapter is checked against it first (:func:`check_adapter_base`, so a refusal names the
    adapter at fault, not a healthy one compared with it), then the adapters must name one base
    (:func:`check_one_base`)."""
    if base_reader is not None:
        compared: dict[Path, str | None] = {}  # adapters naming one local folder: its tensors read once
        for ad in adapters:
            check_adapter_base(ad, Path(base_path), base_reader, compared)
    check_one_base(adapters)
