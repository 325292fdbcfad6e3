"""Base class for config sections: frozen, unknown keys rejected, value kinds checked, readable errors."""

from __future__ import annotations

import math
import types
import typing
from typing import Any, ClassVar, Mapping

from pydantic import BaseModel, ConfigDict, ValidationError, ValidatorFunctionWrapHandler, field_validator
from pydantic_core import PydanticCustomError

from evomerge.errors import ConfigError


class Section(BaseModel):
    """A config section. Besides pydantic's own checks, every field's value is checked for its
    kind in one place (:func:`kind_problem`): true/false is refused where a number is expected
    (also inside lists and mappings), anything but true/false where a boolean is expected (YAML
    1.2 reads ``yes``/``on`` as strings), and a non-finite number (``.inf``, ``.nan``) anywhere
    a number is expected. An integer stays accepted for a float, a string for a path. A field
    whose type is a union of kinds (``delta: float | Literal["adaptive", "relative"]``) is
    refused in one line saying what it accepts (``ACCEPTS`` of the section, else built from the
    type), not one line per member of the union."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    #: the section's dotted name in the whole config (``scale``), for errors of a section built directly
    SECTION: ClassVar[str] = ""
    #: field -> what it accepts, in words (the one line a bad value of a union-typed field gets)
    ACCEPTS: ClassVar[dict[str, str]] = {}

    def __init__(self, /, **data: Any) -> None:
        # a section built directly (``ScaleConfig(delta=0)``) refuses a bad value with a ConfigError, as a loaded config does
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, type(self).__name__, type(self).SECTION)) from None

    # pydantic calls a custom __init__ for every nested section it validates, so a bad key would end the
    # whole config's validation at its section with this ConfigError; marked as the base __init__
    # (pydantic's own flag), nested sections are built by pydantic-core as usual and every section's
    # errors are collected, one line each (tests/test_config_strict_types.py checks that they are)
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @field_validator("*", mode="wrap")
    @classmethod
    def _value_kinds(cls, value: Any, handler: ValidatorFunctionWrapHandler, info) -> Any:
        field = cls.model_fields.get(info.field_name)
        if field is None:
            return handler(value)
        annotation = field.annotation
        accepts = cls.ACCEPTS.get(info.field_name) or _union_accepts(annotation)
        problem = kind_problem(annotation, value)
        if problem is None:
            try:
                value = handler(value)
            except ValidationError:
                if accepts is None:
                    raise
                problem = accepts
            else:
                problem = finite_problem(annotation, value)
        if problem is not None:
            raise PydanticCustomError("config_value", _escaped(f"Input should be {accepts or problem}"))
        return value


def _escaped(text: str) -> str:
    """``text`` as a pydantic message template (which formats ``{name}``)."""
    return text.replace("{", "{{").replace("}", "}}")


def _strip(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _union_members(tp: Any) -> tuple[Any, ...] | None:
    """The members of a union type other than None (``None`` if ``tp`` is no union)."""
    tp = _strip(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return tuple(a for a in typing.get_args(tp) if a is not type(None))
    return None


_SINGULAR = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_PLURAL = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}


def describe(tp: Any, *, plural: bool = False, finite: bool = False) -> str:
    """What the type ``tp`` accepts, in words: ``a list of integers``, ``a number or 'adaptive'
    or 'relative'`` (``finite``: numbers said to be finite)."""
    tp = _strip(tp)
    if tp in _SINGULAR:
        words = (_PLURAL if plural else _SINGULAR)[tp]
        return words.replace("number", "finite number") if finite and tp is float else words
    members = _union_members(tp)
    if members is not None:
        return " or ".join(describe(m, plural=plural, finite=finite) for m in members)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in args)
    if origin in (list, tuple, set, frozenset) and args:
        return ("lists of " if plural else "a list of ") + describe(args[0], plural=True, finite=finite)
    if origin is dict and len(args) == 2:
        return ("mappings of " if plural else "a mapping of ") + "names to " + describe(args[1], plural=True, finite=finite)
    return getattr(tp, "__name__", str(tp))


def _union_accepts(tp: Any) -> str | None:
    """What a union-typed field accepts, in words (``a number or 'adaptive' or 'relative'``);
    ``None`` for a field of one kind (``int | None`` is one kind)."""
    members = _union_members(tp)
    return describe(tp) if members is not None and len(members) > 1 else None


def _numeric(tp: Any) -> bool:
    return _strip(tp) in (int, float)


def kind_problem(tp: Any, value: Any) -> str | None:
    """Why ``value`` (raw, before pydantic's coercion) is of the wrong kind for the type ``tp``,
    as the end of an ``Input should be ...`` message: a boolean where a number is expected, a
    non-boolean where a boolean is (also inside lists and mappings); ``None`` when it is not
    (pydantic's own checks follow)."""
    why = _wrong_kind(tp, value)
    if why is None:
        return None
    return describe(tp) + {"bool": " (true/false is not a number)", "str": " (YAML 1.2: only true/false are "
                           "booleans, yes/no/on/off are strings)", "other": ""}[why]


def _wrong_kind(tp: Any, value: Any) -> str | None:
    tp = _strip(tp)
    if tp is bool:
        return None if isinstance(value, bool) else "str" if isinstance(value, str) else "other"
    if _numeric(tp):
        return "bool" if isinstance(value, bool) else None
    members = _union_members(tp)
    if members is not None:
        if value is None:
            return None
        if isinstance(value, bool) and bool not in members and any(_numeric(m) for m in members):
            return "bool"
        return _wrong_kind(members[0], value) if len(members) == 1 else None
    inner = _elements(tp, value)
    if inner is None:
        return None
    return next((w for w in (_wrong_kind(inner[0], v) for v in inner[1]) if w is not None), None)


def _elements(tp: Any, value: Any) -> tuple[Any, Any] | None:
    """``(element type, elements)`` of a list, tuple or set value of a list-like type, or of a
    mapping's values of a ``dict`` type; None for any other type or value."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, tuple, set, frozenset) and args and isinstance(value, (list, tuple, set, frozenset)):
        return args[0], value
    if origin is dict and len(args) == 2 and isinstance(value, dict):
        return args[1], value.values()
    return None


def finite_problem(tp: Any, value: Any) -> str | None:
    """Why the validated ``value`` of the type ``tp`` is refused for holding a non-finite number
    (``inf``, ``nan``) where a number is expected, as the end of an ``Input should be ...``
    message; ``None`` when it holds none."""
    return describe(tp, finite=True) if _non_finite(tp, value) else None


def _non_finite(tp: Any, value: Any) -> bool:
    tp = _strip(tp)
    if isinstance(value, float):
        return not math.isfinite(value) and (_numeric(tp) or any(_numeric(m) for m in _union_members(tp) or ()))
    members = _union_members(tp)
    if members is not None:
        return len(members) == 1 and _non_finite(members[0], value)
    inner = _elements(tp, value)
    return inner is not None and any(_non_finite(inner[0], v) for v in inner[1])


def format_validation_error(err: ValidationError, source: str, section: str = "") -> str:
    """One line per problem: ``source: `a.b` must be ... Got X instead.`` (``section``: the
    dotted name the locations are inside, for a section validated on its own)."""
    return "\n".join(error_line(e, source, section) for e in err.errors())


def error_line(e: Mapping[str, Any], source: str, section: str = "") -> str:
    """The line of one of a ``ValidationError``'s ``errors()`` (see :func:`format_validation_error`)."""
    loc = ".".join([section] * bool(section) + [str(p) for p in e["loc"]]) or "(top level)"
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    elif e["type"] == "value_error":  # a validator's own message: pydantic's "Value error, " adds nothing
        msg = msg.removeprefix("Value error, ")
    got = e.get("input")
    got_s = "" if e["type"] in ("extra_forbidden", "missing") else f" Got {got!r} instead."
    return f"{source}: `{loc}`: {msg}.{got_s}"


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
