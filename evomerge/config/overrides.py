"""The one way to change a config after loading it: dotted keys set to values.

``evomerge <command> --set merge.params.density=0.5 --set rht.enabled=true`` (values are YAML
1.2), the command's own flags, Optuna trials (``tune.space``) and the scale/evolve drivers all
go through :func:`override`, then the schema validates the result once. Setting
``merge.method`` to another method drops the parameters the new method does not have.
"""

from __future__ import annotations

from typing import Any, Mapping

from evomerge.errors import ConfigError


def parse_sets(items: list[str], flag: str = "--set") -> dict[str, Any]:
    """``["a.b=1", ...]`` -> ``{"a.b": 1}`` (values parsed as YAML 1.2; unparsable text stays a string)."""
    import yaml

    from evomerge.config.base import yaml_load

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"{flag} {item!r}: expected dotted.key=value (e.g. {flag} merge.params.density=0.5)")
        try:
            out[key] = yaml_load(value) if value.strip() else value
        except yaml.YAMLError:
            out[key] = value
    return out


def flat_keys(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The dotted keys of the values in ``data``, a nested mapping or ``--set`` values (whose keys
    are dotted already): ``{"scale": {"seeds": [0]}}`` and ``{"scale.seeds": [0]}`` both give
    ``{"scale.seeds": [0]}``. A mapping is followed down to its values (an empty one is kept as
    it is); anything else is a value, lists included."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, Mapping) and v:
            out.update(flat_keys(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def override_data(data: dict[str, Any], values: Mapping[str, Any], source: str = "--set") -> dict[str, Any]:
    """``data`` (a raw or dumped config mapping) with the dotted ``values`` set; a new dict."""
    import copy

    data = copy.deepcopy(dict(data or {}))
    if "merge.method" in values:
        merge = data.get("merge")
        merge = dict(merge) if isinstance(merge, dict) else {}
        new = str(values["merge.method"])
        if merge.get("method", "task_arithmetic") != new:
            merge["params"] = _kept_params(new, merge.get("params") or {})
        merge["method"] = new
        data["merge"] = merge
    for name, value in values.items():
        if name == "merge.method":
            continue
        if name.startswith(_SPACE_PREFIX):
            _set_space_dim(data, name, value, source)
            continue
        parts = name.split(".")
        node = data
        for i, p in enumerate(parts[:-1]):
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"{source}: cannot set `{name}`: `{where}` is {type(nxt).__name__}, not a section")
            node = nxt
        node[parts[-1]] = value
    return data


_SPACE_PREFIX = "tune.space."


def _set_space_dim(data: dict[str, Any], name: str, value: Any, source: str) -> None:
    """``tune.space.<dimension>``: the dimensions of ``tune.space`` are named by dotted config
    names (``rht.gamma``), so the rest of the key after ``tune.space.`` is one dimension's name,
    not a path: its whole mapping is set (``null`` drops it). ``tune.space.<dimension>.<key>``
    with ``key`` one of a dimension's keys (``low``, ``high``, ...) and ``<dimension>`` already
    in the space sets that key."""
    from evomerge.config.sections import SearchSpaceParam

    tune = data.get("tune")
    if tune is None:
        tune = data["tune"] = {}
    if not isinstance(tune, dict):
        raise ConfigError(f"{source}: cannot set `{name}`: `tune` is {type(tune).__name__}, not a section")
    space = tune.get("space")
    if space is None:
        space = tune["space"] = {}
    if not isinstance(space, dict):
        raise ConfigError(f"{source}: cannot set `{name}`: `tune.space` is {type(space).__name__}, not a mapping")
    dim = name[len(_SPACE_PREFIX):]
    head, _, key = dim.rpartition(".")
    if dim not in space and head in space and key in SearchSpaceParam.model_fields:
        spec = space[head]
        if not isinstance(spec, dict):
            raise ConfigError(f"{source}: cannot set `{name}`: `tune.space.{head}` is {type(spec).__name__}, "
                              "not a mapping")
        space[head] = {**spec, key: value}
    elif value is None:
        space.pop(dim, None)
    else:
        space[dim] = value


def _kept_params(method: str, params: Mapping[str, Any]) -> dict[str, Any]:
    from evomerge.merging.registry import get_merge_method

    try:
        names = {p.name for p in get_merge_method(method).params}
    except ConfigError:
        return {}  # an unknown method: the schema reports it
    return {k: v for k, v in dict(params).items() if k in names}


def override(cfg, values: Mapping[str, Any], source: str = "--set"):
    """A validated config: ``cfg`` (an :class:`EvomergeConfig` or a raw mapping) with ``values`` set."""
    from evomerge.config import config_from_dict

    data = cfg if isinstance(cfg, dict) else cfg.model_dump(mode="python", exclude_none=True)
    return config_from_dict(override_data(data, values, source), source)
