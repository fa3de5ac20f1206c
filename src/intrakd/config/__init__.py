"""Typed run configuration: the schema (:mod:`~intrakd.config.schema`) and its reading from YAML and
``key.sub=value`` overrides (:mod:`~intrakd.config.parse`). Imports nothing else of intrakd."""

from intrakd.config.parse import (
    apply_overrides,
    flatten,
    from_dict,
    load_config,
    parse_yaml_value,
    read_yaml,
    to_dict,
)
from intrakd.config.schema import (
    PATH_KEYS,
    RESULT_NEUTRAL_KEYS,
    RUN_COMMANDS,
    RUN_CONFIGS,
    CheckpointConfig,
    ConfigError,
    DataConfig,
    DistConfig,
    DistillConfig,
    DistillMethodSpec,
    IntraConfig,
    LearnedTemperatureSpec,
    OptimConfig,
    PerfConfig,
    StudentConfig,
    TeacherConfig,
    TrainConfig,
    intra_term_on,
    key_in,
    register_distill_method,
    register_learned_temperature,
    setting,
    upgrade_stored,
)

__all__ = [
    "PATH_KEYS", "RESULT_NEUTRAL_KEYS", "RUN_COMMANDS", "RUN_CONFIGS", "CheckpointConfig", "ConfigError", "DataConfig",
    "DistConfig", "DistillConfig", "DistillMethodSpec", "IntraConfig", "LearnedTemperatureSpec", "OptimConfig",
    "PerfConfig", "StudentConfig",
    "TeacherConfig", "TrainConfig", "apply_overrides", "flatten", "from_dict", "intra_term_on", "key_in",
    "load_config", "parse_yaml_value",
    "read_yaml", "register_distill_method", "register_learned_temperature", "setting", "to_dict", "upgrade_stored",
]
