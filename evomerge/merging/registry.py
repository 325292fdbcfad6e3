"""The one registry of merge methods.

A method is a pure function over stacked per-tensor task vectors::

    fn(deltas: Tensor[n, *shape], weights: Tensor[n], *, generator, stats, **params) -> Tensor

registered with its parameter schema. The CLI, the search crossover, the scale driver and the
Optuna search space all read methods and parameters from here, never from a copy.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from evomerge.errors import ConfigError


@dataclass(frozen=True)
class Param:
    """One hyperparameter of a merge method, with its constraint.

    ``low``/``high`` bound numeric values; ``low_open``/``high_open`` make the bound strict.
    ``tune_low``/``tune_high`` give the range Optuna searches by default (defaults to the bounds).
    """

    name: str
    kind: type
    default: Any
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None
    help: str = ""
    tune_low: float | None = None
    tune_high: float | None = None
    tune_log: bool = False
    arg: str | None = None  # the operator's keyword for it, where ``name`` is not an identifier ("lambda")

    @property
    def keyword(self) -> str:
        return self.arg or self.name

    def interval(self) -> str:
        left = "(" if self.low_open or self.low is None else "["
        right = ")" if self.high_open or self.high is None else "]"
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        return f"{left}{lo}, {hi}{right}"

    def validate(self, value: Any, owner: str) -> Any:
        """Coerce and check ``value``; raise :class:`ConfigError` quoting it."""
        where = f"{owner}: `{self.name}`"
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{where} must be true or false. Got {value!r} instead.")
            return value
        if self.kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where} must be a number. Got {value!r} instead.")
            if self.kind is int and float(value) != int(value):
                raise ConfigError(f"{where} must be an integer. Got {value!r} instead.")
            value = self.kind(value)
            bad = (
                value != value  # NaN
                or (self.low is not None and (value < self.low or (self.low_open and value == self.low)))
                or (self.high is not None and (value > self.high or (self.high_open and value == self.high)))
            )
            if bad:
                raise ConfigError(f"{where} must be in {self.interval()}. Got {value!r} instead.")
            return value
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{where} must be one of {list(self.choices)}. Got {value!r} instead.")
        return value


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge operator and what it needs.

    needs: extra per-tensor statistics the operator reads from ``stats`` (e.g. ``"fisher"``,
        ``"gram"``); such methods need a small dataset.
    linear: the result is a weighted sum of the inputs, so a LoRA merge is exact in low rank
        by concatenation.
    random: the operator draws random numbers and takes a ``torch.Generator``.
    per_task: the operator returns a :class:`~evomerge.merging.types.PerTaskMerge`
        (a shared vector plus per-task masks and rescalers, e.g. EMR-merging).
    finalize: ``(merged: dict[key, result], params) -> dict`` run once on a whole model's
        results (e.g. EMR's rescaler over all tensors), or None.
    """

    name: str
    fn: Callable[..., Any]
    params: tuple[Param, ...] = ()
    description: str = ""
    needs: frozenset[str] = field(default_factory=frozenset)
    linear: bool = False
    random: bool = False
    per_task: bool = False
    finalize: Callable[..., Any] | None = None

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise ConfigError(
            f"merge method `{self.name}` has no parameter `{name}`; "
            f"its parameters are: {', '.join(p.name for p in self.params) or '(none)'}"
        )

    def resolve(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Validate ``params`` against the schema and fill in defaults."""
        params = dict(params or {})
        for name in params:
            self.param(name)  # raises on unknown names
        return {p.name: p.validate(params.get(p.name, p.default), f"merge method `{self.name}`") for p in self.params}

    def call(self, deltas, weights, generator, stats, resolved: Mapping[str, Any]):
        """Run the operator on already resolved parameters (each passed as its keyword)."""
        kwargs = {p.keyword: resolved[p.name] for p in self.params}
        return self.fn(deltas, weights, generator=generator, stats=stats, **kwargs)

    def check_pool_size(self, n: int, params: Mapping[str, Any] | None = None, weights=None) -> None:
        """Refuse, before any work, ``n`` experts the method cannot merge: the operator runs once on
        ``n`` zero task vectors, so its own check (slerp's "exactly 2") fires now, not at the first
        real tensor. Methods that read data statistics (Fisher, RegMean) are not run."""
        if n < 1 or self.needs:
            return
        import torch

        w = torch.tensor(weights, dtype=torch.float32) if weights is not None and len(weights) == n else None
        self.call(torch.zeros(n, 4), w, torch.Generator().manual_seed(0), None, self.resolve(params))

    def __call__(self, deltas, weights=None, *, generator=None, stats=None, **params):
        """One tensor merge; ``params`` by their registry names (a stray one is a ConfigError)."""
        return self.call(deltas, weights, generator, stats, self.resolve(params))


_REGISTRY: dict[str, MergeMethod] = {}


def register_merge(
    name: str,
    *,
    params: tuple[Param, ...] = (),
    description: str = "",
    needs: tuple[str, ...] = (),
    linear: bool = False,
    random: bool = False,
    per_task: bool = False,
    finalize: Callable[..., Any] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``fn`` as merge method ``name``. ``fn`` takes exactly its parameters
    as keyword-only arguments (no ``**kwargs``), so a stray keyword is an error."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"merge method {name!r} registered twice")
        _check_signature(name, fn, params)
        _REGISTRY[name] = MergeMethod(
            name=name,
            fn=fn,
            params=tuple(params),
            description=description or _first_paragraph(fn.__doc__),
            needs=frozenset(needs),
            linear=linear,
            random=random,
            per_task=per_task,
            finalize=finalize,
        )
        return fn

    return deco


def _first_paragraph(doc: str | None) -> str:
    """A docstring's first paragraph on one line (a sentence may wrap onto several lines)."""
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def _check_signature(name: str, fn: Callable[..., Any], params: tuple[Param, ...]) -> None:
    """The operator's keyword-only arguments are ``generator``, ``stats`` and its parameters."""
    sig = inspect.signature(fn)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        raise ValueError(f"merge method {name!r}: take parameters as keyword-only arguments, not **kwargs")
    kw = {n for n, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    want = {"generator", "stats"} | {p.keyword for p in params}
    if kw != want:
        raise ValueError(f"merge method {name!r}: keyword-only arguments {sorted(kw)} must be {sorted(want)}")


def _ensure_loaded() -> None:
    # Importing the operator modules registers them; done lazily to avoid import cycles.
    import evomerge.merging.methods  # noqa: F401


def get_merge_method(name: str) -> MergeMethod:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown merge method `{name}`; available: {', '.join(sorted(_REGISTRY))}"
        ) from None


def available_methods() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def all_methods() -> dict[str, MergeMethod]:
    _ensure_loaded()
    return dict(_REGISTRY)
