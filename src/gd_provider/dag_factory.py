"""Build retraining DAGs from a validated config (YAML file or dict), or compose your own from stages.

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
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)


class ConfigError(ValueError):
    """A retraining config is invalid; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FeaturesConfig(_Strict):
    feature_service: str | None = None
    features: list[str] | None = None
    label_source: str
    entity_keys: list[str] = Field(min_length=1)
    timestamp_column: str = "event_timestamp"
    label_column: str
    sort_by: list[str] | None = None
    lookback_days: float = Field(21, gt=0)
    partition_rows: int | None = Field(
        1_000_000, gt=0, description="write the training set as parquet parts of this many rows when larger; "
        "null: always one file",
    )

    @model_validator(mode="after")
    def _one_feature_selector(self) -> FeaturesConfig:
        if bool(self.feature_service) == bool(self.features):
            raise ValueError("give exactly one of feature_service or features")
        return self


class FreshnessConfig(_Strict):
    """Wait until the feature views are materialized through the run's data interval end."""

    feature_views: list[str] | None = None
    feature_service: str | None = None
    poke_interval_seconds: float = Field(300, gt=0)
    timeout_minutes: float = Field(360, gt=0)
    deferrable: bool = False

    @model_validator(mode="after")
    def _not_both(self) -> FreshnessConfig:
        if self.feature_views is not None and self.feature_service is not None:
            raise ValueError("give feature_views or feature_service, not both")
        return self


class ToleranceConfig(_Strict):
    """How far a night's data may stray from the champion's training data (``core.profile.Tolerances``)."""

    null_rate_slack: float = Field(0.02, ge=0, le=1)
    range_widening: float = Field(1.0, ge=0)
    row_count_band: tuple[float, float] = (0.5, 2.0)
    positive_rate_band: float = Field(3.0, ge=1)
    positive_rate_abs: float | None = Field(None, ge=0, le=1)
    category_sets: bool = True
    label_mean_shift_std: float = Field(1.0, ge=0, description="regression: the label's mean may move by this many "
                                        "of the champion's label standard deviations")
    range_mostly: float = Field(1.0, ge=0.5, le=1, description="share of values that must lie in the champion's "
                                "widened range / category set (1.0: all)")

    @field_validator("row_count_band")
    @classmethod
    def _band(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= value[0] <= 1 <= value[1]:
            raise ValueError(f"must be (lo, hi) with 0 <= lo <= 1 <= hi, got {list(value)}")
        return value


class ValidationConfig(_Strict):
    expectations: str | list[dict[str, Any]] | None = Field(
        None,
        description="'package.module:function' returning the expectation list, a JSON/YAML file, or the list",
    )
    schema_checks: bool = Field(False, description="derive exists + dtype checks from features.feature_service")
    champion_checks: bool = Field(
        False, description="derive null-rate / range / category / row-count / label checks from the champion's "
        "training data (skipped, and said so, while there is no champion)",
    )
    tolerances: ToleranceConfig = ToleranceConfig()
    profile_columns: list[str] | None = None
    profile_exclude: list[str] = []
    on_failure: Literal["fail", "skip"] = "fail"
    dropped_rows: Literal["fail", "warn"] = Field(
        "fail", description="label/feature rows stamped after the retrieval, or labels without a timestamp: fail the "
        "validation gate, or warn (reported, passing)",
    )

    @field_validator("expectations")
    @classmethod
    def _resolvable(cls, value: str | list[dict[str, Any]] | None) -> str | list[dict[str, Any]] | None:
        return None if value is None else _check_expectations(value)

    @model_validator(mode="after")
    def _something_to_check(self) -> ValidationConfig:
        if self.expectations is None and not (self.schema_checks or self.champion_checks):
            raise ValueError("give expectations, or turn on schema_checks or champion_checks")
        return self


class DriftConfig(_Strict):
    policy: Literal["retrain", "warn", "block"] = "warn"
    numeric_columns: list[str]
    categorical_columns: list[str] = []
    numeric_method: str = "wasserstein"
    categorical_method: str = "jensenshannon"
    threshold: float = Field(0.1, gt=0)
    per_column: dict[str, dict[str, Any]] | None = None
    drift_share: float = Field(0.5, gt=0, le=1)
    sample_size: int = Field(50_000, gt=0)
    prediction_threshold: float = Field(0.1, gt=0, description="the champion's prediction drift score above which "
                                        "its predictions drifted")
    baseline: dict[str, Any] | None = Field(None, description="judge each score against its own recent nights "
                                            "(core.drift_baseline.DriftBaseline: nights, k, min_nights, min_score)")

    @model_validator(mode="after")
    def _methods(self) -> DriftConfig:
        from gd_provider.core.drift_baseline import DriftBaseline, DriftBaselineError
        from gd_provider.core.drift_methods import check_drift_settings

        try:
            DriftBaseline.from_dict(self.baseline)
        except (DriftBaselineError, TypeError) as exc:
            raise ValueError(str(exc)) from None

        check_drift_settings(numeric_method=self.numeric_method, categorical_method=self.categorical_method,
                             numeric_columns=self.numeric_columns, categorical_columns=self.categorical_columns,
                             per_column=self.per_column)
        return self


class SmokeTestConfig(_Strict):
    """The post-promotion smoke test. The score checks are the task's: binary reads ``positive_rate_bounds``
    and ``max_positive_rate_change``, multiclass ``max_class_share_change``, regression ``prediction_bounds``
    and ``max_mean_shift_std``; another task's key, set to something other than its default, is refused."""

    canary_rows: int = Field(500, gt=0)
    max_p95_latency_ms: float = Field(250.0, gt=0)
    positive_rate_bounds: tuple[float, float] = (0.0, 0.5)
    max_positive_rate_change: float | None = Field(0.05, ge=0)
    max_class_share_change: float | None = Field(0.1, ge=0)
    prediction_bounds: tuple[float, float] | None = None
    max_mean_shift_std: float | None = Field(1.0, ge=0)

    @field_validator("positive_rate_bounds", "prediction_bounds")
    @classmethod
    def _ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not value[0] <= value[1]:
            raise ValueError(f"must be [lo, hi] with lo <= hi, got {list(value)}")
        return value


class AlertingConfig(_Strict):
    webhook_conn_id: str | None = None
    slack: bool = False


class ScheduleConfig(_Strict):
    cron: str | None = None
    assets: list[str] | None = None

    @model_validator(mode="after")
    def _one(self) -> ScheduleConfig:
        if bool(self.cron) == bool(self.assets):
            raise ValueError("give exactly one of cron or assets")
        return self


class RetrainingConfig(_Strict):
    dag_id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    model_name: str = Field(min_length=1)
    alias: str = "champion"
    schedule: ScheduleConfig
    start_date: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    catchup: bool = False
    tags: list[str] = []
    features: FeaturesConfig
    freshness: FreshnessConfig | None = None
    validation: ValidationConfig
    drift: DriftConfig
    training: dict[str, Any]
    health: dict[str, Any] = {}
    gate: dict[str, Any]
    smoke_test: SmokeTestConfig = SmokeTestConfig()
    alerting: AlertingConfig = AlertingConfig()
    ray_conn_id: str = "ray_default"
    mlflow_conn_id: str = "mlflow_default"
    feast_conn_id: str = "feast_default"

    @field_validator("validation")
    @classmethod
    def _schema_checks_need_a_service(cls, value: ValidationConfig, info: ValidationInfo) -> ValidationConfig:
        features = info.data.get("features")  # absent when features itself is invalid (reported there)
        if value.schema_checks and features is not None and not features.feature_service:
            raise ValueError("schema_checks needs features.feature_service (features lists features, no service)")
        return value

    @field_validator("start_date")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    @field_validator("training")
    @classmethod
    def _spec(cls, value: dict[str, Any]) -> dict[str, Any]:
        from gd_provider.core.training.spec import SpecError, TrainingSpec

        try:
            return TrainingSpec.from_dict(value).to_dict()
        except SpecError as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("gate")
    @classmethod
    def _gate(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        from gd_provider.core.gate import GateConfigError, GatePolicy

        task = _config_task(info)
        try:
            GatePolicy.from_dict(value, task=task)
        except (GateConfigError, TypeError) as exc:
            raise ValueError(str(exc)) from exc
        return value

    @field_validator("smoke_test")
    @classmethod
    def _smoke_test(cls, value: SmokeTestConfig, info: ValidationInfo) -> SmokeTestConfig:
        from gd_provider.core.gate import smoke_option_problems

        task = _config_task(info)
        problems = smoke_option_problems(task, {k: getattr(value, k) for k in value.model_fields_set})
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @model_validator(mode="after")
    def _rule_metrics(self) -> RetrainingConfig:
        """A gate metric measured at a declared rule (regression's within_tolerance) needs that rule."""
        task = training_task(self)
        needs = getattr(task, "rule_metrics", ())
        if not needs or self.training.get("operating_point"):
            return self
        slices = self.gate.get("slices") or {}
        for where, bounds in [*((w, self.gate.get(w) or {}) for w in
                                ("value_thresholds", "max_abs_regression", "max_rel_regression")),
                              *((f"slices.{w}", slices.get(w) or {}) for w in
                                ("max_abs_regression", "worst_slice_floor", "max_gap"))]:
            named = sorted(set(bounds) & set(needs))
            if named:
                raise ValueError(f"gate.{where}: {', '.join(named)} is measured at the {task.name} task's operating "
                                 f"point: declare training.operating_point ({task.rule_help})")
        return self

    @model_validator(mode="after")
    def _label_tolerances(self) -> RetrainingConfig:
        from gd_provider.core.profile import tolerance_problems

        tolerances = self.validation.tolerances
        problems = tolerance_problems(training_task(self),
                                      {k: getattr(tolerances, k) for k in tolerances.model_fields_set})
        if problems:
            raise ValueError("; ".join(f"validation.tolerances.{p}" for p in problems))
        return self

    @field_validator("health")
    @classmethod
    def _health(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        from gd_provider.core.training.health import HealthThresholds

        thresholds = HealthThresholds.from_value(value or None)
        training = info.data.get("training")  # absent when training itself is invalid (reported there)
        if thresholds.require_sensitivity_pass and training is not None and not (
                training.get("sensitivity") or {}).get("enabled"):
            raise ValueError("require_sensitivity_pass is true but training.sensitivity.enabled is false: the "
                             "required check would never run (enable it, or drop the requirement)")
        return value


def _config_task(info: ValidationInfo) -> Any:
    """The task of the config's training spec (validated before the sections that depend on it; None when
    the spec itself is invalid, which is reported there)."""
    spec = info.data.get("training")
    if spec is None:
        return None
    from gd_provider.core.training.spec import TrainingSpec

    return TrainingSpec.from_dict(spec).task_plugin()


def training_task(cfg: RetrainingConfig) -> Any:
    """The :class:`~gd_provider.core.tasks.Task` of a config's training spec."""
    from gd_provider.core.training.spec import TrainingSpec

    return TrainingSpec.from_dict(cfg.training).task_plugin()


def _task_args(cfg: RetrainingConfig) -> dict[str, Any]:
    """``task`` / ``task_options`` of the config's training spec, as the operators take them (the binary
    task's ``pos_weight`` is a spec field and a training matter: none of the checks reads it)."""
    return {"task": cfg.training.get("task", "binary"), "task_options": dict(cfg.training.get("task_options") or {})}


def load_config(source: str | Path | dict[str, Any]) -> RetrainingConfig:
    """Validate a config from a YAML file or a dict. Errors name the file and each bad field."""
    where = "config"
    if isinstance(source, (str, Path)):
        where = str(source)
        try:
            data = yaml.safe_load(Path(source).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{where}: cannot read YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: top level must be a mapping, got {type(data).__name__}")
        _anchor_relative_paths(data, Path(source).resolve().parent)
    else:
        data = source
    try:
        return RetrainingConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {'; '.join(_problem(err) for err in exc.errors())}") from None


_SPEC_FIELD = re.compile(r"^training spec field '([^']+)': ")
# a section's own field, as the gate / smoke-test / tolerance checks name it: "value_thresholds: metric ..."
_SECTION_FIELD = re.compile(r"^([a-z_]+(?:\.[a-z_]+)*): ")
_TASK_SECTIONS = ("gate", "smoke_test")


def _problem(err: Any) -> str:
    """``section.field: message`` for one pydantic error (a spec field's error names ``training.<field>``)."""
    loc = ".".join(str(p) for p in err["loc"]) or "<root>"
    msg = str(err["msg"])
    if err.get("type") == "value_error":
        msg = msg.removeprefix("Value error, ")
        if loc == "training" and (m := _SPEC_FIELD.match(msg)):
            loc, msg = f"training.{m.group(1)}", msg[m.end():]
        elif loc in _TASK_SECTIONS and (m := _SECTION_FIELD.match(msg)):
            loc, msg = f"{loc}.{m.group(1)}", msg[m.end():]
        elif loc == "<root>" and (m := _SECTION_FIELD.match(msg)) and m.group(1).startswith("validation."):
            loc, msg = m.group(1), msg[m.end():]
    return f"{loc}: {msg}"


def _anchor_relative_paths(data: dict[str, Any], base: Path) -> None:
    """A relative expectations file in a config file means next to that file: the dag-processor and the
    workers run from other directories, so it becomes an absolute path before anything checks it."""
    from gd_provider.operators.validation import IMPORT_PATH

    validation = data.get("validation")
    value = validation.get("expectations") if isinstance(validation, dict) else None
    if isinstance(value, str) and value.strip() and not IMPORT_PATH.match(value):
        path = Path(value).expanduser()
        if not path.is_absolute():
            validation["expectations"] = str(base / path)


def _check_expectations(value: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    from gd_provider.operators.validation import IMPORT_PATH

    if isinstance(value, str) and not IMPORT_PATH.match(value) and not Path(value).is_file():
        raise ValueError(f"{value!r} is neither 'module:function' nor an existing file")
    return value


def resolve_expectations(value: str | list[dict[str, Any]]) -> Any:
    """Checked here, resolved at run time: ``module:function`` stays a string (the validation task imports
    it, so parsing the DAG file never imports Great Expectations); a file must exist; a list stays."""
    try:
        return _check_expectations(value)
    except ValueError as exc:
        raise ConfigError(f"validation.expectations: {exc}") from None


# What the operator should do when a release task fails (the alert's ``action``).
RELEASE_ACTIONS = {
    "evaluate": "Nothing was registered or promoted; {model}@{alias} is unchanged. Fix the cause in the task log, "
                "then clear evaluate and its downstream tasks.",
    "register": "Nothing was promoted; {model}@{alias} is unchanged. Fix the cause (is the MLflow registry "
                "reachable?), then clear register and its downstream tasks: this run's version is adopted, "
                "not registered twice.",
    "promote": "{model}@{alias} may or may not have moved: check the alias and the model's audit trail in MLflow "
               "before clearing promote and its downstream tasks.",
    "smoke_test": "The model just promoted to {model}@{alias} failed its smoke test; the rollback task restores the "
                  "previous champion: expect a 'rolled back' alert, or a 'rollback failed' one that needs you.",
    "rollback": "{model}@{alias} may still serve the model that failed its post-promotion checks (or there is no "
                "previous champion to restore): act by hand now. Read the reason and the audit trail, then trigger "
                "the DAG gd_manual_rollback with the model, the version to restore and a reason (or move the "
                "alias in MLflow), and check what serving loads.",
}
RUN_FAILED_ACTION = ("The run_report task's log (and report.json) lists the tasks that failed; each of them sent "
                     "its own alert, and a failed release task's alert says what to do.")


def _callbacks(cfg: RetrainingConfig, event: str, action: str = "") -> list[Any]:
    from gd_provider.notifications import LogNotifier, WebhookNotifier

    action = action.format(model=cfg.model_name, alias=cfg.alias)
    out: list[Any] = [LogNotifier(event, action=action)]
    if cfg.alerting.webhook_conn_id:
        out.append(WebhookNotifier(cfg.alerting.webhook_conn_id, event, action=action, slack=cfg.alerting.slack))
    return out


def _task_group(group_id: str, default: str, prefix_task_ids: bool | None, tooltip: str) -> Any:
    """A stage's TaskGroup: task ids unprefixed under the default group id (the shipped DAG's ids), prefixed
    with the group id otherwise (unless ``prefix_task_ids`` says), so two models' stages fit in one DAG."""
    from airflow.sdk import TaskGroup

    prefix = group_id != default if prefix_task_ids is None else prefix_task_ids
    return TaskGroup(group_id, prefix_group_id=prefix, tooltip=tooltip)


def data_stage(cfg: RetrainingConfig, group_id: str = "data", *,
               prefix_task_ids: bool | None = None, param_prefix: str = "") -> tuple[Any, Any]:
    """[features_fresh →] retrieve_training_set → validate → drift_check.
    Returns ``(task_group, dataset XComArg)``. Task ids are prefixed with ``group_id`` when it is not the
    default (``prefix_task_ids`` overrides). Reads the Params ``as_of``, ``<param_prefix>drift_policy`` and
    ``<param_prefix>skip_drift_reason`` (added to the DAG when missing)."""
    from gd_provider.operators.drift import DriftCheckOperator
    from gd_provider.operators.features import FeastHistoricalFeaturesOperator
    from gd_provider.operators.validation import DataValidationOperator

    f = cfg.features
    p = _param_templates(param_prefix)
    alerts = _callbacks(cfg, "gate failed")
    task = _task_args(cfg)  # the label checks and the prediction drift are the task's
    with _task_group(group_id, "data", prefix_task_ids, "Feast → Great Expectations → Evidently") as group:
        fresh = None
        if cfg.freshness is not None:
            from gd_provider.sensors.features import FeatureFreshnessSensor

            fr = cfg.freshness
            fresh = FeatureFreshnessSensor(
                task_id="features_fresh", feature_views=fr.feature_views, feature_service=fr.feature_service,
                poke_interval=fr.poke_interval_seconds, timeout=fr.timeout_minutes * 60, deferrable=fr.deferrable,
                feast_conn_id=cfg.feast_conn_id, as_of="{{ params.as_of }}", on_failure_callback=alerts,
            )
        retrieve = FeastHistoricalFeaturesOperator(
            task_id="retrieve_training_set", label_source=f.label_source, feature_service=f.feature_service,
            features=f.features, entity_keys=f.entity_keys, timestamp_column=f.timestamp_column,
            label_column=f.label_column, sort_by=f.sort_by, lookback=timedelta(days=f.lookback_days),
            feast_conn_id=cfg.feast_conn_id, as_of="{{ params.as_of }}", partition_rows=f.partition_rows,
            on_failure_callback=alerts,
        )
        v = cfg.validation
        validate = DataValidationOperator(
            task_id="validate", dataset=retrieve.output,
            expectations=resolve_expectations(v.expectations) if v.expectations is not None else None,
            feature_service=f.feature_service if v.schema_checks else None, feast_conn_id=cfg.feast_conn_id,
            champion_model_name=cfg.model_name if v.champion_checks else None, champion_alias=cfg.alias,
            label_column=f.label_column,
            tolerances=v.tolerances.model_dump(exclude_unset=True) if v.champion_checks else None,
            profile_columns=v.profile_columns, profile_exclude=v.profile_exclude, on_failure=v.on_failure,
            dropped_rows=v.dropped_rows,
            mlflow_conn_id=cfg.mlflow_conn_id, experiment_name=cfg.model_name, as_of="{{ params.as_of }}",
            on_failure_callback=alerts, **task,
        )
        drift = DriftCheckOperator(
            task_id="drift_check", dataset=retrieve.output, model_name=cfg.model_name, alias=cfg.alias,
            policy=p["drift_policy"], skip_reason=p["skip_drift_reason"],
            numeric_columns=cfg.drift.numeric_columns, categorical_columns=cfg.drift.categorical_columns,
            numeric_method=cfg.drift.numeric_method, categorical_method=cfg.drift.categorical_method,
            threshold=cfg.drift.threshold, per_column=cfg.drift.per_column, drift_share=cfg.drift.drift_share,
            sample_size=cfg.drift.sample_size, mlflow_conn_id=cfg.mlflow_conn_id, on_failure_callback=alerts, **task,
            prediction_threshold=cfg.drift.prediction_threshold, baseline=cfg.drift.baseline,
        )
        if fresh is not None:
            fresh >> retrieve
        retrieve >> validate >> drift
    _add_params(retrieve, cfg, param_prefix, ("as_of", "drift_policy", "skip_drift_reason"))
    return group, retrieve.output


def training_stage(cfg: RetrainingConfig, dataset: Any, group_id: str = "training", *,
                   prefix_task_ids: bool | None = None, param_prefix: str = "") -> tuple[Any, Any]:
    """train (Ray Train, guarded) → health_gate. Returns ``(task_group, training XComArg)``.
    Reads the Param ``<param_prefix>training_overrides`` and the rerun Variable of its ``train`` task
    (:func:`gd_provider.core.rerun.rerun_variable_key`)."""
    from gd_provider.core.rerun import rerun_variable_key
    from gd_provider.operators.health import TrainingHealthGate
    from gd_provider.operators.training import RayTrainOperator

    p = _param_templates(param_prefix)
    alerts = _callbacks(cfg, "training stopped")
    with _task_group(group_id, "training", prefix_task_ids, "Ray Train + training health gate") as group:
        # A run's Params cannot change after it started: a cleared `train` reruns with the run's
        # training_overrides, updated by a rerun override for that run in the task's rerun Variable
        # (gd_rerun.<dag_id> for the nightly DAG's `train`; the DAG the task is in, and its task id when
        # prefixed, when stages are composed).
        train = RayTrainOperator(
            task_id="train", dataset=dataset, spec=cfg.training, spec_overrides=p["training_overrides"],
            model_name=cfg.model_name, ray_conn_id=cfg.ray_conn_id, mlflow_conn_id=cfg.mlflow_conn_id,
            on_failure_callback=alerts,
        )
        train.rerun_variable = rerun_variable_key(train.dag_id if train.has_dag() else cfg.dag_id, train.task_id)
        health = TrainingHealthGate(task_id="health_gate", training=train.output, thresholds=cfg.health or None,
                                    on_failure_callback=alerts)
        train >> health
    _add_params(train, cfg, param_prefix, ("training_overrides",), rerun_variable=train.rerun_variable)
    return group, train.output


_DERIVE: Any = object()


def _drift_task_id(dataset: Any) -> str | None:
    """The drift check reading ``dataset`` (the XComArg :func:`data_stage` returns): its one
    DriftCheckOperator downstream of the retrieval task, whatever its (prefixed) id; None when there is none."""
    from gd_provider.operators.drift import DriftCheckOperator

    producer = getattr(dataset, "operator", None)
    found = [t for t in getattr(producer, "downstream_list", []) if isinstance(t, DriftCheckOperator)]
    return found[0].task_id if len(found) == 1 else None


def release_stage(cfg: RetrainingConfig, dataset: Any, training: Any, group_id: str = "release", *,
                  prefix_task_ids: bool | None = None, drift_task_id: str | None = _DERIVE,
                  param_prefix: str = "") -> Any:
    """evaluate → register → promote → smoke_test → rollback.

    ``drift_task_id``: the drift check whose report the registration records; by default the one
    :func:`data_stage` built on ``dataset`` (None: record no drift report). Reads the Params
    ``<param_prefix>force_promotion_reason`` and ``<param_prefix>smoke_test_max_p95_latency_ms``."""
    from gd_provider.operators.registry import (
        ModelEvaluationGateOperator,
        ModelSmokeTestOperator,
        PromoteModelOperator,
        RegisterModelOperator,
        RollbackModelOperator,
    )

    conn = {"mlflow_conn_id": cfg.mlflow_conn_id}
    p = _param_templates(param_prefix)
    smoke = cfg.smoke_test
    task = _task_args(cfg)  # checked when parsed; at run time the gate and the smoke test use what was trained
    if drift_task_id is _DERIVE:
        drift_task_id = _drift_task_id(dataset)

    def alerts(task: str) -> list[Any]:
        event = {"smoke_test": "smoke test failed", "rollback": "rollback failed"}.get(task, "release failed")
        return _callbacks(cfg, event, RELEASE_ACTIONS[task])

    with _task_group(group_id, "release", prefix_task_ids, "gate → registry → champion → smoke test") as group:
        evaluate = ModelEvaluationGateOperator(task_id="evaluate", dataset=dataset, training=training,
                                               model_name=cfg.model_name, policy=cfg.gate, alias=cfg.alias,
                                               on_failure_callback=alerts("evaluate"), **task, **conn)
        register = RegisterModelOperator(task_id="register", dataset=dataset, training=training,
                                         gate=evaluate.output, model_name=cfg.model_name, drift_task_id=drift_task_id,
                                         on_failure_callback=alerts("register"), **conn)
        promote = PromoteModelOperator(task_id="promote", model=register.output, gate=evaluate.output,
                                       alias=cfg.alias, force_reason=p["force_promotion_reason"],
                                       on_failure_callback=alerts("promote"), **conn)
        smoke_test = ModelSmokeTestOperator(
            task_id="smoke_test", dataset=dataset, model_name=cfg.model_name, alias=cfg.alias,
            canary_rows=smoke.canary_rows, max_p95_latency_ms=p["smoke_test_max_p95_latency_ms"],
            positive_rate_bounds=smoke.positive_rate_bounds,
            max_positive_rate_change=smoke.max_positive_rate_change,
            max_class_share_change=smoke.max_class_share_change, prediction_bounds=smoke.prediction_bounds,
            max_mean_shift_std=smoke.max_mean_shift_std,
            decision_threshold=cfg.gate.get("decision_threshold", 0.5),
            training=training, gate=evaluate.output, **task,  # what this run trained, and what its gate measured
            promote_task_id=promote.task_id,  # test the version this run promoted
            on_failure_callback=alerts("smoke_test"), **conn,
        )
        rollback = RollbackModelOperator(task_id="rollback", promote_task_id=promote.task_id,
                                         on_success_callback=_callbacks(cfg, "rolled back"),
                                         on_failure_callback=alerts("rollback"), **conn)
        evaluate >> register >> promote >> smoke_test >> rollback
    _add_params(evaluate, cfg, param_prefix, ("force_promotion_reason", "smoke_test_max_p95_latency_ms"))
    return group


SHARED_PARAMS = ("as_of",)  # one value for the whole DAG run, whatever the model
MODEL_PARAMS = ("training_overrides", "drift_policy", "skip_drift_reason", "force_promotion_reason",
                "smoke_test_max_p95_latency_ms")
_PARAM_PREFIX = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*)?$")
# kept on the DAG object (a DAG's hash changes as tasks are added): {Param name: the model whose stages read it}
_PARAM_OWNERS = "_gd_param_owners"


def _param_name(name: str, param_prefix: str) -> str:
    if not isinstance(param_prefix, str) or not _PARAM_PREFIX.fullmatch(param_prefix):
        raise ConfigError(f"param_prefix: {param_prefix!r} must be empty or a Python identifier such as 'b_' "
                          "(it starts the Params' names in templates)")
    return name if name in SHARED_PARAMS else f"{param_prefix}{name}"


def _param_templates(param_prefix: str) -> dict[str, str]:
    """``{param: "{{ params.<prefixed name> }}"}`` for the Params a stage reads."""
    return {name: f"{{{{ params.{_param_name(name, param_prefix)} }}}}" for name in (*SHARED_PARAMS, *MODEL_PARAMS)}


def retraining_params(cfg: RetrainingConfig, param_prefix: str = "", *, dag_id: str | None = None,
                      rerun_variable: str | None = None) -> dict[str, Any]:
    """Validated Params for manual runs from the UI (recorded in lineage and the audit trail).

    The model's own Params are named ``<param_prefix><name>``; ``as_of`` is shared by every model of a DAG.
    ``dag_id`` / ``rerun_variable`` only word the descriptions (default: the config's DAG and its ``train``)."""
    from airflow.sdk import Param

    from gd_provider.core.rerun import rerun_variable_key

    rerun_variable = rerun_variable or rerun_variable_key(dag_id or cfg.dag_id)
    about = f" ({cfg.model_name})" if param_prefix else ""
    params = {
        "training_overrides": Param(
            {}, type="object", title="Training overrides",
            description=f'TrainingSpec fields to override{about}, e.g. {{"lr": 0.001, "epochs": 10}}. To retrain an '
                        f"existing run differently, set the Variable {rerun_variable} and clear train + downstream "
                        "(a run's Params cannot be changed after it started)"),
        "drift_policy": Param(cfg.drift.policy, enum=["retrain", "warn", "block"], title="Drift policy",
                              description=f"What drift against the champion's training data does{about}"),
        # Optional text Params are nullable with a null default: the trigger form treats a plain string Param
        # as required and would not submit with its defaults. Empty (or null) means unset.
        "skip_drift_reason": Param(None, type=["null", "string"], title="Skip the drift check: reason",
                                   description=f"Skip the drift check{about} for this run; the reason is recorded. "
                                               "Leave empty to run it"),
        "force_promotion_reason": Param(None, type=["null", "string"], title="Force the promotion: reason",
                                        description=f"Promote{about} even when the gate rejects; the reason is "
                                                    "recorded in the audit trail. Leave empty to let the gate decide"),
        "as_of": Param(None, type=["null", "string"], pattern=r"^(|\d{4}-\d{2}-\d{2}(T[0-9:]+)?)$",
                       title="Data window end (as_of)",
                       description="End of the data window (freshness check, training set, validation) "
                                   "instead of the run's: its data interval end, or for a manual run the last "
                                   "scheduled tick"),
        "smoke_test_max_p95_latency_ms": Param(cfg.smoke_test.max_p95_latency_ms, type="number",
                                               title="Smoke-test latency budget (ms)",
                                               exclusiveMinimum=0, description=f"Smoke-test latency budget{about}"),
    }
    return {_param_name(name, param_prefix): param for name, param in params.items()}


def _add_params(task: Any, cfg: RetrainingConfig, param_prefix: str, names: tuple[str, ...], *,
                rerun_variable: str | None = None) -> None:
    """Add the Params a stage reads to the DAG of ``task`` where missing (the DAG's own win), and refuse a
    model's Param that another model's stages already read: an override for one would change both."""
    if not task.has_dag():
        return
    dag = task.dag
    owners: dict[str, str] = vars(dag).setdefault(_PARAM_OWNERS, {})
    wanted = retraining_params(cfg, param_prefix, dag_id=dag.dag_id, rerun_variable=rerun_variable)
    me = f"{cfg.model_name}@{cfg.alias}"  # one model served under one alias: one set of Params
    for name in names:
        key = _param_name(name, param_prefix)
        owner = owners.setdefault(key, me)
        if owner != me and name not in SHARED_PARAMS:
            suggestion = re.sub(r"[^A-Za-z0-9_]", "_", cfg.model_name)
            suggestion = suggestion if suggestion[:1].isalpha() else f"m{suggestion}"
            raise ConfigError(
                f"DAG {dag.dag_id!r}: the stages of {me} would read the Param {key!r}, which the stages of "
                f"{owner} already read (a {name} for one would apply to both): give each model's data_stage, "
                f"training_stage and release_stage its own param_prefix, e.g. param_prefix='{suggestion}_'")
        if key not in dag.params:
            dag.params[key] = wanted[key]


def build_retraining_dag(source: str | Path | dict[str, Any] | RetrainingConfig, *, auto_register: bool = True) -> Any:
    """The full retraining DAG for one model, from a config.

    Any error — the config's, or an operator refusing an argument while the DAG is built — is raised as a
    :class:`ConfigError` naming the file (when built from one). A DAG that failed half-way is never
    registered with Airflow. ``auto_register=False``: Airflow finds the DAG only where it is assigned to a
    module-level name (as :func:`build_dags_from_folder` does)."""
    cfg = source if isinstance(source, RetrainingConfig) else load_config(source)
    where = str(source) if isinstance(source, (str, Path)) else "config"
    try:
        return _build(cfg, auto_register=auto_register)
    except ConfigError as exc:
        if str(exc).startswith(f"{where}: "):
            raise
        raise ConfigError(f"{where}: {exc}") from exc
    except Exception as exc:
        raise ConfigError(f"{where}: cannot build DAG {cfg.dag_id!r}: {type(exc).__name__}: {exc}") from exc


def _build(cfg: RetrainingConfig, *, auto_register: bool) -> Any:
    from airflow.sdk import DAG, Asset, chain

    from gd_provider.operators.report import RunReportOperator

    schedule: Any = cfg.schedule.cron if cfg.schedule.cron else [Asset(uri) for uri in cfg.schedule.assets or []]
    with DAG(
        dag_id=cfg.dag_id,
        description=cfg.description or f"Guarded retraining of {cfg.model_name}",
        schedule=schedule,
        start_date=cfg.start_date,
        catchup=cfg.catchup,
        max_active_runs=1,
        render_template_as_native_obj=True,
        default_args={"retries": 0},
        tags=["gd_provider", "retraining", *cfg.tags],
        params=retraining_params(cfg),
        doc_md=__doc__,
        on_failure_callback=_callbacks(cfg, "run failed", RUN_FAILED_ACTION),
        auto_register=auto_register,
    ) as dag:
        try:
            data, dataset = data_stage(cfg)
            training_group, training = training_stage(cfg, dataset)
            release = release_stage(cfg, dataset, training)
            chain(data, training_group, release, RunReportOperator(task_id="run_report"))
        except BaseException:
            dag.auto_register = False  # leaving the `with` would register the half-built DAG
            raise
    return dag


def _build_folder(folder: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Build every ``*.yaml``/``*.yml`` in ``folder`` on its own: ``({dag_id: dag}, {file: error})``."""
    dags: dict[str, Any] = {}
    files: dict[str, Path] = {}
    errors: dict[str, str] = {}
    for path in sorted(Path(folder).glob("*.y*ml")):
        try:
            dag = build_retraining_dag(path, auto_register=False)
        except Exception as exc:  # one file's problem, whatever it is, must not stop the others
            message = str(exc)
            errors[str(path)] = message if message.startswith(f"{path}: ") else f"{path}: {type(exc).__name__}: {exc}"
            continue
        if dag.dag_id in dags:
            errors[str(path)] = f"{path}: dag_id: {dag.dag_id!r} is already the dag_id of {files[dag.dag_id]}"
            continue
        dags[dag.dag_id], files[dag.dag_id] = dag, path
    return dags, errors


def build_dags_from_folder(folder: str | Path, namespace: dict[str, Any]) -> dict[str, str]:
    """Turn every ``*.yaml`` in ``folder`` into a DAG in ``namespace`` (a DAG file's ``globals()``).

    A broken config — invalid, or failing while its DAG is built — does not stop the others: its error
    (naming the file, and the field where it is one) is returned, logged, and reported to Airflow as a
    parse warning of the loader file; :func:`config_errors` turns the same errors into an import error.
    """
    import logging
    import warnings

    dags, errors = _build_folder(folder)
    for message in errors.values():
        logging.getLogger(__name__).error("retraining config rejected: %s", message)
        warnings.warn(f"retraining config rejected: {message}", UserWarning, stacklevel=2)
    namespace.update(dags)
    return errors


def config_errors(folder: str | Path) -> dict[str, str]:
    """``{file: error}`` for every config in ``folder`` whose DAG :func:`build_dags_from_folder` leaves out:
    each DAG is built (and discarded), so build errors are found as well as validation errors."""
    return _build_folder(folder)[1]


def raise_config_errors(folder: str | Path) -> None:
    """Raise one :class:`ConfigError` listing every broken config in ``folder`` (one line per file), for
    a DAG file whose import error then shows them in the Airflow UI."""
    errors = config_errors(folder)
    if errors:
        raise ConfigError("invalid retraining config(s):\n" + "\n".join(errors.values()))
