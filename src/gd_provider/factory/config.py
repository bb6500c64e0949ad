"""The retraining config: one pydantic model per section, validated when a DAG file is parsed, errors naming
the file and the field (``configs/fraud.yaml: training.lr: must be > 0``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
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


class GateConfig(_Strict):
    """One more gate in the DAG (``gates:`` list): a built-in or your own ``Gate`` subclass, run by a
    :class:`~gd_provider.operators.gate.GateOperator` after the data stage's drift check (``stage: data``: it
    sees the dataset) or after the training health gate (``stage: training``: the dataset and the training
    manifest); a failure stops the run before anything is registered."""

    gate: str = Field(description="a built-in gate ('health') or a Gate subclass by import path 'pkg.mod:Class'")
    options: dict[str, Any] = {}
    stage: Literal["data", "training"] = "training"
    task_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]+$")
    on_failure: Literal["fail", "skip"] = "fail"

    @model_validator(mode="after")
    def _known(self) -> GateConfig:
        from gd_provider.core.gates.base import GateError, make_gate

        try:
            make_gate(self.gate, self.options)
        except GateError as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def resolved_task_id(self) -> str:
        from gd_provider.core.gates.base import gate_class

        if self.task_id:
            return self.task_id
        name = gate_class(self.gate).__name__
        return "gate_" + re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower().removesuffix("_gate")


class ApprovalConfig(_Strict):
    """A person approves each promotion (Airflow's HITL ApprovalOperator between register and promote)."""

    required: bool = False
    timeout_hours: float | None = Field(24.0, gt=0, description="how long to wait for an answer (null: forever)")
    on_timeout: Literal["reject", "fail"] = "reject"
    assigned_users: list[dict[str, str]] | None = Field(
        None, description="who may answer: [{id, name}] as the auth manager knows them (null: anyone with access)")


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
    gates: list[GateConfig] = []
    approval: ApprovalConfig = ApprovalConfig()
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

        task = config_task(info)
        try:
            GatePolicy.from_dict(value, task=task)
        except (GateConfigError, TypeError) as exc:
            raise ValueError(str(exc)) from exc
        return value

    @field_validator("smoke_test")
    @classmethod
    def _smoke_test(cls, value: SmokeTestConfig, info: ValidationInfo) -> SmokeTestConfig:
        from gd_provider.core.gate import smoke_option_problems

        task = config_task(info)
        problems = smoke_option_problems(task, {k: getattr(value, k) for k in value.model_fields_set})
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @model_validator(mode="after")
    def _gate_task_ids(self) -> RetrainingConfig:
        seen: dict[str, int] = {}
        for i, gate in enumerate(self.gates):
            task_id = gate.resolved_task_id
            if task_id in seen:
                raise ValueError(f"gates[{i}]: task id {task_id!r} is taken by gates[{seen[task_id]}]: give task_id")
            seen[task_id] = i
        return self

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


def config_task(info: ValidationInfo) -> Any:
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


def task_arguments(cfg: RetrainingConfig) -> dict[str, Any]:
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
    if isinstance(validation, dict) and isinstance(value, str) and value.strip() and not IMPORT_PATH.match(value):
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
