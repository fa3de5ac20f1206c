"""Typed run configuration: the schema (:mod:`~intrakd.config.schema`) and its reading from YAML and
``key.sub=value`` overrides (:mod:`~intrakd.config.parse`). Imports nothing else of intrakd."""

from intrakd.config.parse import apply_overrides, from_dict, load_config, parse_yaml_value, read_yaml, to_dict
from intrakd.config.schema import (
    METHOD_WEIGHTS,
    CheckpointConfig,
    ConfigError,
    DataConfig,
    DistConfig,
    DistillConfig,
    DistillMethod,
    IntraConfig,
    OptimConfig,
    PerfConfig,
    StudentConfig,
    TeacherConfig,
    TrainConfig,
)

__all__ = [
    "METHOD_WEIGHTS", "CheckpointConfig", "ConfigError", "DataConfig", "DistConfig",
    "DistillConfig", "DistillMethod", "IntraConfig", "OptimConfig", "PerfConfig", "StudentConfig",
    "TeacherConfig", "TrainConfig", "apply_overrides", "from_dict", "load_config", "parse_yaml_value",
    "read_yaml", "to_dict",
]
