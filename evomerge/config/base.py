"""Base class for config sections: frozen, unknown keys rejected, readable errors."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError

from evomerge.errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem: ``source: `a.b` must be ... Got X instead.``"""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "value_error":  # a validator's own message: pydantic's "Value error, " adds nothing
            msg = msg.removeprefix("Value error, ")
        got = e.get("input")
        got_s = "" if e["type"] in ("extra_forbidden", "missing") else f" Got {got!r} instead."
        lines.append(f"{source}: `{loc}`: {msg}.{got_s}")
    return "\n".join(lines)


def raise_config_error(err: ValidationError, source: str) -> None:
    raise ConfigError(format_validation_error(err, source)) from None


# --- YAML 1.2 values ------------------------------------------------------------------------------
_BOOL = "tag:yaml.org,2002:bool"
_FLOAT = "tag:yaml.org,2002:float"
_FLOAT_12 = (r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?"
             r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.(?:inf|Inf|INF))$|^\.(?:nan|NaN|NAN)$")


def _loader():
    """PyYAML's safe loader with YAML 1.2 scalars: ``5e-1`` is a number, ``yes``/``no``/``on``/``off``
    are strings (only true/false are booleans)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {
        k: [(tag, rx) for tag, rx in v if tag not in (_BOOL, _FLOAT)]
        for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
    Loader.add_implicit_resolver(_FLOAT, re.compile(_FLOAT_12), list("-+0123456789."))
    return Loader


_LOADER = None


def yaml_load(text: str):
    """Parse YAML text with YAML 1.2 scalars (see :func:`_loader`); raises ``yaml.YAMLError``."""
    import yaml

    global _LOADER
    if _LOADER is None:
        _LOADER = _loader()
    return yaml.load(text, Loader=_LOADER)  # noqa: S506 (a SafeLoader subclass)


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dumps, with both values (for messages)."""
    out = []
    for k in sorted(set(a) | set(b), key=str):
        name = f"{prefix}{k}"
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(config_diff(va, vb, f"{name}."))
        elif va != vb:
            out.append(f"`{name}`: {va!r} -> {vb!r}")
    return out
