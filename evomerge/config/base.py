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
        got = e.get("input")
        got_s = "" if e["type"] in ("extra_forbidden", "missing") else f" Got {got!r} instead."
        lines.append(f"{source}: `{loc}`: {msg}.{got_s}")
    return "\n".join(lines)


def raise_config_error(err: ValidationError, source: str) -> None:
    raise ConfigError(format_validation_error(err, source)) from None
