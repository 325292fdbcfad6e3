"""Validate a config built in layers (a file or the defaults, ``--set``, a command's flags, a
preset) and name, on each refused line, the layer that set the refused key.

One resolver for every command: the CLI's ``--set`` / flags and ``evomerge scale --preset`` both
call :func:`validate_layered`, so a refusal reads the same whichever way the config was built.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping, Sequence

from evomerge.errors import ConfigError

Layer = tuple[str, Mapping[str, Any]]  # (its label, e.g. "--set"; its dotted keys -> values)

#: the label of a command's own built-in config (``evomerge scale``'s), what its layers are laid over
BUILT_IN = "the built-in config"


def load_layered(path: str | Path | None, layers: Sequence[Layer], defaults: Mapping[str, Any] | None = None):
    """The config file at ``path`` (else ``defaults``: a command's built-in config, else the
    schema's defaults) with each layer's dotted keys set in turn, validated once
    (:func:`validate_layered`). A key that cannot be set (under a value that is no section) is
    refused naming its layer."""
    from evomerge.config.overrides import override_data

    base, data = _base(path, defaults)
    checked = data
    for label, layer in layers:
        checked = override_data(checked, layer, label)
    values = {k: v for _, layer in layers for k, v in layer.items()}
    merged = override_data(data, values, " + ".join(label for label, layer in layers if layer))
    return validate_layered(merged, base, data, layers)


def blame_layered(err: Exception, path: str | Path | None, layers: Sequence[Layer],
                  defaults: Mapping[str, Any] | None = None, under: str = "") -> Exception:
    """``err`` with each line prefixed by where its keys were set in the config :func:`load_layered`
    built from the same arguments, for a check that needs more than the config (a pool's size) and
    so runs after it loaded. Only a :class:`ConfigError` that says its keys line by line
    (``keys_by_line``), all under ``under``, is rewritten; anything else comes back as it is."""
    by_line = getattr(err, "keys_by_line", None) if isinstance(err, ConfigError) else None
    if not by_line or not all(k.startswith(under) for ks, _ in by_line for k in ((ks,) if isinstance(ks, str) else ks)):
        return err
    base, data = _base(path, defaults)
    return ConfigError("\n".join(f"{sources(ks, base, data, layers)}: {line}"
                                  for ks, text in by_line for line in text.splitlines()))


def _base(path: str | Path | None, defaults: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """(its label, its raw data) of what the layers are laid over: the file, else ``defaults``."""
    from evomerge.config import load_config_data

    if path is not None:
        return str(path), load_config_data(path)
    return (BUILT_IN if defaults else "defaults"), copy.deepcopy(dict(defaults or {}))


def validate_layered(merged: dict[str, Any], base: str, data: Mapping[str, Any], layers: Sequence[Layer]):
    """The :class:`EvomergeConfig` of ``merged``: ``data`` (from ``base``: a file's name or
    "defaults") with each layer's dotted keys set in turn. A refused value is reported naming
    who set it: the layer that set the key or a section above it (else ``base``), plus later
    layers that set keys inside it; a check across keys names the sources of the keys on its
    line (``ConfigError.keys_by_line`` / ``.key``, :func:`evomerge.config.sections.key_error`),
    else those of the section whose check failed."""
    from pydantic import ValidationError

    from evomerge.config import EvomergeConfig
    from evomerge.config.base import format_validation_error

    try:
        return EvomergeConfig.model_validate(merged)
    except ValidationError as err:
        lines = format_validation_error(err, "").splitlines()
        if len(lines) != len(err.errors()):  # (one line per error, as format_validation_error writes them)
            raise ConfigError(format_validation_error(err, sources("", base, data, layers))) from None
        raise ConfigError("\n".join(sources(".".join(map(str, e["loc"])), base, data, layers) + line
                                    for e, line in zip(err.errors(), lines))) from None
    except ConfigError as err:
        raise ConfigError("\n".join(f"{sources(keys, base, data, layers)}: {line}"
                                    for keys, line in _lines_with_keys(err, merged))) from None


def _lines_with_keys(err: ConfigError, merged: dict[str, Any]) -> list[tuple[str | tuple[str, ...], str]]:
    """Each line of a cross-key refusal with the keys it is about: its own (``keys_by_line``),
    the refusal's (``key``), else the failing section's (every key of it)."""
    by_line = getattr(err, "keys_by_line", None)
    if by_line:
        return [(keys, line) for keys, text in by_line for line in text.splitlines()]
    where = getattr(err, "key", None) or _failing_section(merged)
    return [(where, line) for line in str(err).splitlines()]


def sources(loc: str | tuple[str, ...], base: str, data: Mapping[str, Any], layers: Sequence[Layer]) -> str:
    """Who set the value at the dotted ``loc`` ("" = the whole config): the last layer that set it
    or a section above it (else ``base``), plus the later layers that set keys inside it; e.g.
    ``--set`` or ``merge.yaml + --method``. Several keys (a check that reads them together): the
    sources of each in order, each named once, the file or built-in config first, the schema's
    defaults only if nothing else."""
    who: list[str] = []
    for key in (loc,) if isinstance(loc, str) else loc:
        who += [label for label in _key_sources(key, base, data, layers) if label not in who]
    who.sort(key=lambda label: label not in ("defaults", base))  # what the others were laid over first
    return " + ".join([w for w in who if w != "defaults"] or who)


def _key_sources(loc: str, base: str, data: Mapping[str, Any], layers: Sequence[Layer]) -> list[str]:
    def above(key: str) -> bool:
        return bool(loc) and (loc == key or loc.startswith(key + "."))

    node = _lookup(data, loc.split(".")) if loc else data
    who = [base] if node is not _MISSING and node != {} else []
    for label, layer in layers:
        for key in layer:
            if above(key):
                who = [label]
            elif (not loc or key.startswith(loc + ".")) and label not in who:
                who.append(label)
    return who or ([base] if not loc else ["defaults"])  # a key nobody set: the schema's default


_MISSING = object()


def _lookup(data: Any, parts: list[str]) -> Any:
    """The value at the dotted key's ``parts`` in raw config data: list items by index
    (``merge.weights.0``), and keys that hold dots themselves (``tune.space`` dimensions are named
    ``rht.gamma``) matched whole, the longest first. A key below a value given in short (an expert
    given as its path string, the error at ``experts.experts.0.path``) is that value; a key that
    is not there at all is ``_MISSING``."""
    node, i = data, 0
    while i < len(parts):
        if isinstance(node, Mapping):
            for j in range(len(parts), i, -1):
                if ".".join(parts[i:j]) in node:
                    node, i = node[".".join(parts[i:j])], j
                    break
            else:
                return _MISSING
        elif isinstance(node, list):
            if not (parts[i].isdigit() and int(parts[i]) < len(node)):
                return _MISSING
            node, i = node[int(parts[i])], i + 1
        else:
            return node  # (a short form of what the key lies in: set where it was)
    return node


def _failing_section(data: Mapping[str, Any]) -> str:
    """The top-level section of ``data`` whose own check fails ("" if none does on its own)."""
    from pydantic import ValidationError

    from evomerge.config import EvomergeConfig
    from evomerge.config.base import Section

    for name, value in data.items():
        model = EvomergeConfig.model_fields.get(name)
        kind = model.annotation if model is not None else None
        if isinstance(kind, type) and issubclass(kind, Section) and isinstance(value, dict):
            try:
                kind.model_validate(value)
            except ConfigError:
                return name
            except ValidationError:  # a problem of its own keys, not the check that failed across keys
                continue
    return ""
