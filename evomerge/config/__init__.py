"""The one config schema (pydantic, loaded from YAML) shared by the CLI, ``jobs/`` and Optuna."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from evomerge.config.base import Section, format_validation_error, raise_config_error
from evomerge.config.sections import (
    EvaluationConfig,
    ExpertSpec,
    ExpertsConfig,
    GenomeConfig,
    MergeConfig,
    RayConfig,
    RHTConfig,
    ScaleConfig,
    SearchSpaceParam,
    SwarmConfig,
    TuneConfig,
)
from evomerge.errors import ConfigError


class EvomergeConfig(Section):
    seed: int = 0
    device: str = "cpu"
    zoo_dir: Path | None = Field(default=None, description="built-in zoo folder (default: the zoo shipped with evomerge)")
    output: str | None = Field(default=None, description="where results go: a path or a pyarrow filesystem URI")
    experts: ExpertsConfig = Field(default_factory=ExpertsConfig)
    merge: MergeConfig = Field(default_factory=MergeConfig)
    rht: RHTConfig = Field(default_factory=RHTConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    genome: GenomeConfig = Field(default_factory=GenomeConfig)
    swarm: SwarmConfig = Field(default_factory=SwarmConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    scale: ScaleConfig = Field(default_factory=ScaleConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)


def config_from_dict(data: dict[str, Any], source: str = "config") -> EvomergeConfig:
    try:
        return EvomergeConfig.model_validate(data or {})
    except ValidationError as err:
        raise_config_error(err, source)
    except ConfigError as err:  # a check across keys: every problem it found, one line each
        raise ConfigError("\n".join(f"{source}: {line}" for line in str(err).splitlines())) from None


def load_config_data(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a YAML config file (YAML 1.2 scalars), not yet validated."""
    from evomerge.config.base import yaml_load

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        data = yaml_load(path.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte offset {err.start})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    for name, value in data.items():
        if name in EvomergeConfig.model_fields and value is not None and not isinstance(value, dict) \
                and issubclass(EvomergeConfig.model_fields[name].annotation or object, Section):
            raise ConfigError(f"{path}: `{name}` must be a mapping of its keys (e.g. `{name}:` then indented "
                              f"`key: value` lines). Got a {type(value).__name__} instead.")
    return data


def load_config(path: str | Path | None, sets: dict[str, Any] | None = None) -> EvomergeConfig:
    """Load and validate a YAML config (``None``: the defaults), with dotted ``sets`` applied first
    (a refused value named with where it was set: the file, ``--set`` or the defaults)."""
    from evomerge.config.sources import load_layered

    return load_layered(path, [("--set", dict(sets))] if sets else [])


def dump_config(cfg: EvomergeConfig, path: str | Path, *, exclude: set[str] | None = None,
                zoo_refs: bool = False) -> None:
    """``cfg`` as YAML at ``path`` (atomically); ``exclude``: top-level sections left out of the file
    (it still loads as a config: they come back at their defaults); ``zoo_refs``: a built-in zoo's
    files named ``zoo:<profile>/...`` (a config for other machines: :mod:`evomerge.zoo.refs`)."""
    from evomerge.io import atomic_file

    data = cfg.model_dump(mode="json", exclude_none=True, exclude=exclude)
    if zoo_refs:
        from evomerge.zoo.refs import with_zoo_refs

        data = with_zoo_refs(data)
    with atomic_file(path, "w") as fh:
        yaml.safe_dump(data, fh, sort_keys=False)


__all__ = [
    "EvaluationConfig", "EvomergeConfig", "ExpertSpec", "ExpertsConfig", "GenomeConfig", "MergeConfig",
    "RHTConfig", "RayConfig", "ScaleConfig", "SearchSpaceParam", "Section", "SwarmConfig", "TuneConfig",
    "config_from_dict", "dump_config", "format_validation_error", "load_config",
]
