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
    zoo_dir: Path | None = Field(default=None, description="built-in zoo location (default: user cache)")
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
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def load_config(path: str | Path | None) -> EvomergeConfig:
    """Load and validate a YAML config; ``None`` gives the defaults."""
    if path is None:
        return EvomergeConfig()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return config_from_dict(data, str(path))


def dump_config(cfg: EvomergeConfig, path: str | Path) -> None:
    from evomerge.io import atomic_file

    with atomic_file(path, "w") as fh:
        yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True), fh, sort_keys=False)


__all__ = [
    "EvaluationConfig", "EvomergeConfig", "ExpertSpec", "ExpertsConfig", "GenomeConfig", "MergeConfig",
    "RHTConfig", "RayConfig", "ScaleConfig", "SearchSpaceParam", "Section", "SwarmConfig", "TuneConfig",
    "config_from_dict", "dump_config", "format_validation_error", "load_config",
]
