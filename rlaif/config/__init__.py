"""The run's configuration: one typed schema (schema.py), YAML files plus dotted command-line overrides (load.py),
every range and cross-field check (validate.py), the placement the checks and the actors share (placement.py), and
`rlaif config`'s printout (doc.py).

Nothing in this package imports rlaif outside it: what validation needs to know about algorithms and alarms lives
here (algorithms.py, alarm_names.py), and the rest of rlaif imports it from here.
"""

from rlaif.config.alarm_names import ALARMS, OFF_AT, RISES, enabled_alarms, rise_tolerances
from rlaif.config.algorithms import ALGORITHMS, Algorithm, needs_reference
from rlaif.config.load import load_config, native_bf16, resolve_dtypes, save_config, to_dict
from rlaif.config.schema import (
    AlarmConfig,
    Config,
    ConfigError,
    ConstitutionConfig,
    CriticConfig,
    DataConfig,
    EvalConfig,
    LabelerConfig,
    LoRAConfig,
    ModelConfig,
    PolicyConfig,
    PreferenceModelConfig,
    RayConfig,
    RedTeamConfig,
    RLConfig,
    RolloutConfig,
    SelfImproveConfig,
    SLCAIConfig,
    TrainerConfig,
    TrustConfig,
    WandbConfig,
)
from rlaif.config.validate import (
    ATTN_NEEDS,
    RANGES,
    SELF_IMPROVE_FORMATS,
    _validate_attn_implementations,
    import_callable,
    validate,
    validate_alarms,
    validate_eval,
    validate_reward_model,
)

__all__ = [
    "ALARMS", "ALGORITHMS", "ATTN_NEEDS", "OFF_AT", "RANGES", "RISES", "SELF_IMPROVE_FORMATS", "AlarmConfig",
    "Algorithm", "Config", "ConfigError", "ConstitutionConfig", "CriticConfig", "DataConfig", "EvalConfig",
    "LabelerConfig", "LoRAConfig", "ModelConfig", "PolicyConfig", "PreferenceModelConfig", "RLConfig", "RayConfig",
    "RedTeamConfig", "RolloutConfig", "SLCAIConfig", "SelfImproveConfig", "TrainerConfig", "TrustConfig",
    "WandbConfig", "_validate_attn_implementations", "enabled_alarms", "import_callable", "load_config",
    "native_bf16", "needs_reference", "resolve_dtypes", "rise_tolerances", "save_config", "to_dict", "validate",
    "validate_alarms", "validate_eval", "validate_reward_model",
]
