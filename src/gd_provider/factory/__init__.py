"""``gd_provider.factory``: build retraining DAGs from a validated config (YAML file or dict), or compose your own from stages.

``build_retraining_dag(config)`` returns the full nightly DAG::

    data stage       [features_fresh →] retrieve_training_set → validate → drift_check
    training stage   train → health_gate
    release stage    evaluate → register → promote → smoke_test → rollback
                     → run_report (fails the run when anything failed)

Each stage is also a TaskGroup builder (:func:`data_stage`, :func:`training_stage`,
:func:`release_stage`) so data engineers can compose their own DAGs from our parts. With its default
group id a stage keeps its task ids unprefixed (``train``, ``promote``: what the nightly DAG, its docs
and links use); given another group id it prefixes them (``model_b_release.promote``), so several
models' stages fit in one DAG. References between tasks (the rollback's promotion, the registration's
drift report) are taken from the task objects, so they follow the prefix.

Each stage adds the Params it reads to its DAG (``training_overrides``, ``drift_policy``, ...; see
:func:`retraining_params`). Two models in one DAG need their own: give each model's stages a
``param_prefix`` (``b_training_overrides``); a stage that would share another model's Params is refused
while the DAG is built. ``as_of`` (the data window end) is one Param for the whole run.

A config is validated when the DAG file is parsed: a bad one raises :class:`ConfigError` naming the
file and the field (``configs/fraud.yaml: training.lr: must be > 0``). Anything else that stops a DAG
from being built is raised as a :class:`ConfigError` naming the file too.

Modules: ``config`` (the config schema and :func:`load_config`), ``stages`` (the three TaskGroup builders),
``params`` (the Params the stages read), ``loader`` (whole DAGs from a config or a folder of configs).
"""

from gd_provider.factory.config import (
    AlertingConfig,
    ConfigError,
    DriftConfig,
    FeaturesConfig,
    FreshnessConfig,
    RetrainingConfig,
    ScheduleConfig,
    SmokeTestConfig,
    ToleranceConfig,
    ValidationConfig,
    load_config,
    resolve_expectations,
    training_task,
)
from gd_provider.factory.loader import (
    build_dags_from_folder,
    build_retraining_dag,
    config_errors,
    raise_config_errors,
)
from gd_provider.factory.params import MODEL_PARAMS, SHARED_PARAMS, retraining_params
from gd_provider.factory.stages import RELEASE_ACTIONS, data_stage, release_stage, training_stage

__all__ = [
    "MODEL_PARAMS", "RELEASE_ACTIONS", "SHARED_PARAMS", "AlertingConfig", "ConfigError", "DriftConfig",
    "FeaturesConfig", "FreshnessConfig", "RetrainingConfig", "ScheduleConfig", "SmokeTestConfig", "ToleranceConfig",
    "ValidationConfig", "build_dags_from_folder", "build_retraining_dag", "config_errors", "data_stage",
    "load_config", "raise_config_errors", "release_stage", "resolve_expectations", "retraining_params",
    "training_stage", "training_task",
]
