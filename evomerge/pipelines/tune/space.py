"""Optuna search spaces declared in the config (``tune.space``) and applied to a config.

Names are dotted paths into the one config schema:

* ``merge.method``: categorical over registered merge methods;
* ``merge.params.<name>``: a parameter of the merge method (range defaults to the registry's
  ``tune_low``/``tune_high``); with ``merge.method`` in the space, it is sampled only for the
  methods that have it;
* ``experts.count`` (alias ``scale.k``): how many experts of the pool (in pool order) to merge;
* any scalar field of a section: ``rht.gamma``, ``genome.cross_rate``, ``swarm.inertia``, ...

Every bound and choice is checked through the schema before a trial starts, and every trial's
config is re-validated by the schema after the overrides are applied. A dimension the study's
trials never read (``rht.*`` with RHT off, ``merge.*`` in an evolutionary study, ...) is refused
(:func:`_check_used`).
"""

from __future__ import annotations

import json
import typing
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from evomerge.config import EvomergeConfig, TuneConfig
from evomerge.errors import ConfigError, EvomergeError

COUNT_NAMES = ("experts.count", "scale.k")
_UNTUNABLE_SECTIONS = {"tune", "ray", "evaluation", "experts"}  # evaluation: the objective itself


@dataclass(frozen=True)
class Dim:
    """One resolved search-space dimension."""

    name: str
    type: str  # "float" | "int" | "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None

    def describe(self) -> str:
        if self.type == "categorical":
            return f"{self.name} in {list(self.choices or ())}"
        return f"{self.name} in [{self.low:g}, {self.high:g}]{' (log)' if self.log else ''} ({self.type})"


def _where(name: str) -> str:
    return f"tune.space.`{name}`"


def _field_type(model: type, field: str) -> str | None:
    """'int', 'float', 'bool', 'literal' or None for a pydantic field annotation."""
    ann = model.model_fields[field].annotation
    if typing.get_origin(ann) is typing.Literal:
        return "literal"
    args = [a for a in typing.get_args(ann) if a is not type(None)] or [ann]
    kinds = set()
    for a in args:
        if a is bool:
            kinds.add("bool")
        elif a is int:
            kinds.add("int")
        elif a is float:
            kinds.add("float")
        elif typing.get_origin(a) is typing.Literal:
            kinds.add("literal")
    if "float" in kinds:
        return "float"
    return next(iter(kinds)) if len(kinds) == 1 else None


def _check_numeric(name: str, spec, default_type: str) -> tuple[str, float, float]:
    kind = spec.type if "type" in spec.model_fields_set else default_type
    if spec.low is None or spec.high is None:
        raise ConfigError(f"{_where(name)}: a {kind} dimension needs `low` and `high`")
    if not spec.low < spec.high:
        raise ConfigError(f"{_where(name)}: `low` must be below `high`. Got low={spec.low!r}, high={spec.high!r}")
    if spec.log and spec.low <= 0:
        raise ConfigError(f"{_where(name)}: a log-scale range needs `low` > 0. Got {spec.low!r}")
    if kind == "int" and (int(spec.low) != spec.low or int(spec.high) != spec.high):
        raise ConfigError(f"{_where(name)}: an int dimension needs integer bounds. Got [{spec.low}, {spec.high}]")
    return kind, spec.low, spec.high


def _merge_param_dim(name: str, spec, methods: list[str]) -> Dim:
    from evomerge.merging.registry import get_merge_method

    pname = name.split(".", 2)[2]
    owners = [get_merge_method(m) for m in methods]
    owners = [m for m in owners if any(p.name == pname for p in m.params)]
    if not owners:
        raise ConfigError(
            f"{_where(name)}: no merge method in {methods} has a parameter `{pname}` "
            f"(their parameters: {sorted({p.name for m in methods for p in get_merge_method(m).params})})"
        )
    param = owners[0].param(pname)
    if param.kind is bool or param.choices is not None:
        choices = spec.choices or (list(param.choices) if param.choices else [True, False])
        for m in owners:
            for c in choices:
                m.param(pname).validate(c, f"{_where(name)} (method `{m.name}`)")
        return Dim(name, "categorical", choices=tuple(choices))
    if spec.type == "categorical":
        if not spec.choices:
            raise ConfigError(f"{_where(name)}: a categorical dimension needs `choices`")
        for m in owners:
            for c in spec.choices:
                m.param(pname).validate(c, f"{_where(name)} (method `{m.name}`)")
        return Dim(name, "categorical", choices=tuple(spec.choices))
    low = spec.low if spec.low is not None else (param.tune_low if param.tune_low is not None else param.low)
    high = spec.high if spec.high is not None else (param.tune_high if param.tune_high is not None else param.high)
    log = spec.log or ("log" not in spec.model_fields_set and param.tune_log)
    resolved = spec.model_copy(update={"low": low, "high": high, "log": log})
    default_type = "int" if param.kind is int else "float"
    kind, low, high = _check_numeric(name, resolved, default_type)
    if param.kind is int and kind == "float":
        raise ConfigError(f"{_where(name)}: `{pname}` is an integer parameter; use `type: int`")
    for m in owners:  # both ends must be legal values of the parameter
        for v in (low, high):
            m.param(pname).validate(int(v) if kind == "int" else float(v), f"{_where(name)} (method `{m.name}`)")
    return Dim(name, kind, low=low, high=high, log=log)


def _count_dim(name: str, spec, n_experts: int | None) -> Dim:
    low = 1 if spec.low is None else spec.low
    high = n_experts if spec.high is None else spec.high
    if high is None:  # pool size not known yet: checked again once the pool is found
        return Dim(name, "int", low=low, high=None, log=spec.log)
    kind, low, high = _check_numeric(name, spec.model_copy(update={"low": low, "high": high, "type": "int"}), "int")
    if low < 1:
        raise ConfigError(f"{_where(name)}: the number of experts must be at least 1. Got low={low:g}")
    if n_experts is not None and high > n_experts:
        raise ConfigError(f"{_where(name)}: `high`={high:g} but the expert pool has only {n_experts} experts")
    return Dim(name, "int", low=low, high=high, log=spec.log)


def _field_dim(name: str, spec, base: EvomergeConfig) -> Dim:
    parts = name.split(".")
    if len(parts) != 2 or parts[0] not in EvomergeConfig.model_fields:
        raise ConfigError(
            f"{_where(name)}: unknown parameter; use `section.field` (e.g. `rht.gamma`, `genome.cross_rate`), "
            f"`merge.method`, `merge.params.<name>` or `experts.count`"
        )
    section, field = parts
    model = type(getattr(base, section))
    if section in _UNTUNABLE_SECTIONS or not hasattr(model, "model_fields"):
        raise ConfigError(f"{_where(name)}: section `{section}` cannot be tuned")
    if field not in model.model_fields:
        raise ConfigError(
            f"{_where(name)}: unknown parameter `{field}` of section `{section}`; "
            f"its fields are: {', '.join(model.model_fields)}"
        )
    ftype = _field_type(model, field)
    if ftype is None:
        raise ConfigError(f"{_where(name)}: `{name}` is not a scalar field and cannot be tuned")
    if ftype in ("bool", "literal") or spec.type == "categorical":
        choices = spec.choices
        if not choices:
            if ftype == "bool":
                choices = [True, False]
            else:
                raise ConfigError(f"{_where(name)}: a categorical dimension needs `choices`")
        dim = Dim(name, "categorical", choices=tuple(choices))
        probe = list(choices)
    else:
        kind, low, high = _check_numeric(name, spec, "int" if ftype == "int" else "float")
        if ftype == "int" and kind == "float":
            raise ConfigError(f"{_where(name)}: `{name}` is an integer field; use `type: int`")
        dim = Dim(name, kind, low=low, high=high, log=spec.log)
        probe = [int(low), int(high)] if kind == "int" else [float(low), float(high)]
    for v in probe:  # bounds and choices must pass the schema's own constraints
        try:
            apply_overrides(base, {name: v})
        except EvomergeError as err:
            raise ConfigError(f"{_where(name)}: value {v!r} is not allowed: {err}") from None
    return dim


#: the search each config section drives: a dimension of another section than the objective's
#: search reaches no trial (a ``swarm.*`` value is never read by a GENOME run, nor either by a merge)
_SEARCH_SECTIONS = {"genome": "genome", "swarm": "swarm"}

def _mutations(tune: TuneConfig, base: EvomergeConfig) -> set[str]:
    """The mutations GENOME trials can use: ``genome.mutation``/``genome.space`` as the base config
    sets them or as the space samples them (``auto``: coeff in delta space, gauss in ab space)."""

    from evomerge.search.genome import resolve_mutation  # not at import: evomerge.search loads torch

    return {resolve_mutation(m, sp) for m in _values(tune, "genome.mutation", base.genome.mutation)
            for sp in _values(tune, "genome.space", base.genome.space)}


def _values(tune: TuneConfig, name: str, default) -> list:
    """The values a field takes in the study's trials: the choices of its dimension (a bool one
    without choices: both), else the base config's value."""
    spec = tune.space.get(name)
    if spec is None:
        return [default]
    if spec.choices:
        return list(spec.choices)
    return [True, False] if isinstance(default, bool) else [default]


def _unread(name: str, tune: TuneConfig, base: EvomergeConfig) -> str | None:
    """Why the objective's trials never read ``merge.*``, ``rht.*`` or ``scale.*`` dimension ``name``
    (None when they do). A merge trial merges as ``evomerge scale``'s cells do (only
    ``merge.method``/``merge.params``, then RHT when enabled); an evolutionary trial never reads
    ``merge.*`` (the search makes its own weights) and returns the search's best validation fitness,
    which RHT reaches only when it is applied to every candidate (``rht.apply_to: candidate``)."""
    section, field = (name.split(".") + [""])[:2]  # merge.params.<name>: field `params`
    objective = tune.objective
    if section == "scale":  # (scale.k is experts.count, not a field)
        return "no tune trial reads `scale.*` (only `evomerge scale` does); drop it"
    if section == "merge":
        if objective != "merge":
            return (f"each trial is a {objective} run, which never reads `merge.*` (the search makes its own merge "
                    "weights); drop it, or set tune.objective: merge")
        if field not in ("method", "params"):
            return (f"a merge trial merges with `merge.method` and `merge.params` only (as `evomerge scale`'s cells "
                    f"do), never reading `merge.{field}`; drop it")
        return None
    if section != "rht":
        return None
    if objective == "merge" and field == "apply_to":
        return "only evolutionary runs read it (a merge trial applies RHT to its one result); drop it"
    if field != "enabled" and True not in _values(tune, "rht.enabled", base.rht.enabled):
        return ("RHT is off in every trial (rht.enabled: false), so no trial reads `rht.*`; set rht.enabled: true "
                "(or tune `rht.enabled`), or drop it")
    if objective != "merge" and "candidate" not in _values(tune, "rht.apply_to", base.rht.apply_to):
        return (f"with rht.apply_to: final RHT changes only the {objective} run's written result, not the search's "
                "validation fitness a trial returns; set rht.apply_to: candidate (RHT on every scored candidate), "
                "or drop it")
    return None


def _check_used(name: str, tune: TuneConfig, base: EvomergeConfig, mutations: set[str]) -> None:
    """Refuse a dimension the objective's trials never read (it would change nothing, silently)."""
    objective = tune.objective
    section = name.split(".", 1)[0]
    why = _unread(name, tune, base)
    if why is not None:
        raise ConfigError(f"{_where(name)}: has no effect: {why}")
    if section in _SEARCH_SECTIONS and objective != _SEARCH_SECTIONS[section]:
        what = "one merge" if objective == "merge" else f"a {objective} run"
        raise ConfigError(
            f"{_where(name)}: has no effect with tune.objective `{objective}` (each trial is {what}, which "
            f"never reads `{section}.*`); drop it, or set tune.objective: {_SEARCH_SECTIONS[section]}"
        )
    from evomerge.search.genome import MUTATION_FIELDS  # the search declares what each mutation reads

    needs = next((kind for kind, fields in MUTATION_FIELDS.items() if name in (f"genome.{f}" for f in fields)), None)
    if objective == "genome" and needs is not None and needs not in mutations:
        raise ConfigError(
            f"{_where(name)}: has no effect: only the `{needs}` mutation reads it and these trials use "
            f"`{'/'.join(sorted(mutations))}` (genome.mutation auto is coeff in delta space, gauss in ab space); "
            f"drop it, or set genome.mutation: {needs}"
        )


def build_space(tune: TuneConfig, base: EvomergeConfig, n_experts: int | None = None) -> list[Dim]:
    """Resolve and check ``tune.space`` against the schema, the merge registry and the objective.

    Every invalid dimension is reported, one line each (one :class:`ConfigError` whose message
    has a line per problem, as the config loader reports several invalid keys; its
    ``keys_by_line`` gives each line's key, ``tune.space.<name>``, so that the CLI names where the
    dimension was set)."""
    from evomerge.merging.registry import get_merge_method

    from evomerge.config.sections import key_errors

    if not tune.space:
        raise ConfigError("tune.space is empty: declare at least one parameter to search (e.g. `merge.params.density`)")
    dims: list[Dim] = []
    # (the dimension's key, its message): the CLI names where each key was set (the file, --set)
    problems: list[tuple[str | tuple[str, ...], str]] = []
    methods: list[str] | None = [base.merge.method]
    mutations = _mutations(tune, base)
    spec_method = tune.space.get("merge.method")
    if spec_method is not None:
        try:
            if not spec_method.choices:
                raise ConfigError(f"{_where('merge.method')}: give `choices` (merge method names)")
            for m in spec_method.choices:
                try:
                    get_merge_method(str(m))
                except ConfigError as err:  # (the registry's message names the method, not the key)
                    raise ConfigError(f"{_where('merge.method')}: {err}") from None
            methods = [str(m) for m in spec_method.choices]
            _check_used("merge.method", tune, base, mutations)
            dims.append(Dim("merge.method", "categorical", choices=tuple(methods)))
        except ConfigError as err:
            problems.append((_key("merge.method"), str(err)))
            methods = None  # the merge.params.* dimensions cannot be checked against unknown methods
    counts = [n for n in tune.space if n in COUNT_NAMES]
    if len(counts) > 1:
        problems.append((tuple(_key(n) for n in counts),
                         "tune.space: `experts.count` and `scale.k` are the same dimension; give one of them"))
    for name, spec in tune.space.items():
        if name == "merge.method":
            continue
        try:
            if name in COUNT_NAMES:
                dims.append(_count_dim(name, spec, n_experts))
            elif name.startswith("merge.params."):
                if methods is None:
                    continue
                dims.append(_merge_param_dim(name, spec, methods))
                _check_used(name, tune, base, mutations)
            else:
                dims.append(_field_dim(name, spec, base))
                _check_used(name, tune, base, mutations)
        except ConfigError as err:
            problems.append((_key(name), str(err)))
    if problems:
        raise key_errors(problems)
    return dims


def _key(name: str) -> str:
    """The dotted config key of dimension ``name`` (``tune.space.rht.gamma``), for
    :func:`evomerge.config.sources.sources`, which matches the dimension's dotted name whole."""
    return f"tune.space.{name}"


def space_fingerprint(dims: list[Dim], objective: str) -> str:
    """A stable string identifying the space, stored with the study to refuse mismatches."""
    return json.dumps({"objective": objective, "dims": [asdict(d) for d in dims]}, sort_keys=True, default=list)


def suggest(trial, dims: list[Dim]) -> dict[str, Any]:
    """Sample one point; merge parameters only for the chosen method."""
    from evomerge.merging.registry import get_merge_method

    values: dict[str, Any] = {}
    by_name = {d.name: d for d in dims}
    if "merge.method" in by_name:
        values["merge.method"] = trial.suggest_categorical("merge.method", list(by_name["merge.method"].choices))
    method = values.get("merge.method")
    for d in dims:
        if d.name == "merge.method":
            continue
        if d.name.startswith("merge.params.") and method is not None:
            pname = d.name.split(".", 2)[2]
            if not any(p.name == pname for p in get_merge_method(method).params):
                continue
        if d.type == "categorical":
            values[d.name] = trial.suggest_categorical(d.name, list(d.choices))
        elif d.type == "int":
            values[d.name] = trial.suggest_int(d.name, int(d.low), int(d.high), log=d.log)
        else:
            values[d.name] = trial.suggest_float(d.name, float(d.low), float(d.high), log=d.log)
    return values


def apply_overrides(base: EvomergeConfig, values: Mapping[str, Any]) -> EvomergeConfig:
    """A new config with ``values`` (dotted names) set, re-validated by the schema.

    ``experts.count``/``scale.k`` are not config fields and are ignored here (see
    :func:`expert_count`). Changing ``merge.method`` drops base parameters the new method
    does not have.
    """
    from evomerge.config.overrides import override

    return override(base, {k: v for k, v in values.items() if k not in COUNT_NAMES}, "tuned config")


def expert_count(values: Mapping[str, Any]) -> int | None:
    for name in COUNT_NAMES:
        if name in values:
            return int(values[name])
    return None
