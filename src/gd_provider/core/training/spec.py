"""What to train and how: a small, JSON-serializable, validated description of one training run.

Plain Python on purpose: the spec travels from the Airflow task to the Ray workers and into MLflow params.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from gd_provider.core.models import BUILTIN_MODELS
from gd_provider.core.tasks import Task, TaskError, get_task
from gd_provider.core.training.guards import GuardConfig
from gd_provider.core.training.schedule import SCHEDULES

MODELS = BUILTIN_MODELS  # or a user factory 'package.module:factory'
OPTIMIZERS = ("adam", "adamw", "sgd")
BATCH_MODES = ("minibatch", "full", "sgd")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
_TUPLE_FIELDS = ("numeric_features", "categorical_features", "hidden_sizes", "key_columns")
_NESTED_FIELDS = ("guards", "sensitivity")
_DICT_FIELDS = ("task_options", "model_kwargs")


class SpecError(ValueError):
    """A training spec is malformed; the message names the offending field."""

    def __init__(self, field_name: str, message: str):
        self.field = field_name
        super().__init__(f"training spec field {field_name!r}: {message}")


@dataclass(frozen=True)
class SensitivityConfig:
    """Learning-rate sensitivity check: short in-process runs at ``lr x factor`` on a sample of the data.

    The check fails when ``max(metric) - min(metric)`` over the factors exceeds ``max_spread``, or when a
    short run diverges / yields a non-finite metric. ``metric`` is a per-epoch validation metric.
    """

    enabled: bool = False
    factors: tuple[float, ...] = (0.5, 1.0, 2.0)
    sample_rows: int = 20000
    epochs: int = 2
    metric: str | None = None
    max_spread: float = 0.05

    def __post_init__(self) -> None:
        if isinstance(self.factors, list):
            object.__setattr__(self, "factors", tuple(self.factors))

    @classmethod
    def from_value(cls, value: Any) -> SensitivityConfig:
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"expected a mapping, got {type(value).__name__}")
        unknown = sorted(set(value) - {f.name for f in fields(cls)})
        if unknown:
            raise KeyError(unknown[0])
        return cls(**value)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "factors": list(self.factors)}

    def problem(self) -> tuple[str, str] | None:
        if not isinstance(self.enabled, bool):
            return "enabled", f"must be true or false, got {self.enabled!r}"
        factors = self.factors
        if (
            not isinstance(factors, tuple)
            or len(factors) < 2
            or not all(_is_number(f) and f > 0 for f in factors)
        ):
            return "factors", f"must be a list of at least two positive numbers, got {factors!r}"
        if len(set(factors)) != len(factors):
            return "factors", f"must not repeat a factor, got {list(factors)!r}"
        if not _is_int(self.sample_rows) or self.sample_rows < 10:
            return "sample_rows", f"must be an integer >= 10, got {self.sample_rows!r}"
        if not _is_int(self.epochs) or self.epochs < 1:
            return "epochs", f"must be an integer >= 1, got {self.epochs!r}"
        if not isinstance(self.metric, str) or not self.metric:
            return "metric", f"must be a per-epoch validation metric name, got {self.metric!r}"
        if not _is_number(self.max_spread) or self.max_spread <= 0:
            return "max_spread", f"must be a positive number, got {self.max_spread!r}"
        return None


@dataclass(frozen=True)
class TrainingSpec:
    """One training run. Notes on the less obvious fields:

    * ``task`` (``binary`` | ``multiclass`` | ``regression`` | a user's ``package.module:TaskClass``) and
      ``task_options``: what is predicted (:mod:`gd_provider.core.tasks`); it picks the loss (``loss``
      unset: the task's default), the output width, the label checks and every metric.
    * ``model``: ``mlp`` | ``logistic`` | a user's ``package.module:factory`` called as
      ``factory(input_dim, output_dim, **model_kwargs)`` (:mod:`gd_provider.core.models`); ``hidden_sizes``
      and ``dropout`` are the ``mlp``'s, ``model_kwargs`` a user factory's.
    * ``key_columns``: columns that order rows sharing a timestamp (ties are broken by them, so the split
      and the holdout digest are the same on every run); they must be in the dataset.

    * ``batch_mode``: ``minibatch`` (``batch_size`` rows per step and rank), ``full`` (all of a rank's rows in
      one step: full-batch gradient descent; ``batch_size`` is ignored) or ``sgd`` (one row per step;
      ``batch_size`` is ignored; the statistical guards - loss spike, relative explosion - are off, see
      ``guards``).
    * ``lr_schedule`` (``constant`` | ``step`` | ``cosine``) with ``warmup_steps`` of linear warm-up first;
      ``lr_step_size`` (optimizer steps) and ``lr_gamma`` drive ``step``. See ``schedule.lr_at``.
    * ``early_stopping_patience`` epochs without an improvement of ``early_stopping_metric`` by more than
      ``early_stopping_min_delta`` stop the run; the best epoch's weights become the model.
    * ``sync_every_k_steps``: per-step telemetry stays on the device and is copied to the host (and the
      guards decide, collectively) every k steps and at the end of every epoch.
    * ``device``: ``auto`` (cuda when available), ``cpu`` or ``cuda``; ``precision``: ``fp32`` or ``bf16``
      (autocast, cuda only: bf16 on cpu is rejected, it is never silently downgraded).
    * ``max_failures``: worker-group restarts (from the latest checkpoint) Ray Train may do.
    * ``validation_fraction`` / ``holdout_fraction``: the latest rows by time; the holdout (never trained
      on) is what the evaluation gate scores, so it must be > 0, and ``run_training`` refuses a dataset
      whose holdout comes out empty or with a single label class.
    """

    numeric_features: tuple[str, ...]
    categorical_features: tuple[str, ...]
    label: str
    timestamp_column: str
    task: str = "binary"
    task_options: dict[str, Any] = field(default_factory=dict, hash=False)
    # binary: the serving decision rule, chosen on the validation split after training (see
    # core.tasks.operating_point: max_fpr | min_precision | target_positive_rate | costs | threshold, calibration)
    operating_point: dict[str, Any] | None = field(default=None, hash=False)
    model: str = "mlp"
    model_kwargs: dict[str, Any] = field(default_factory=dict, hash=False)
    hidden_sizes: tuple[int, ...] = (64, 32)
    dropout: float = 0.1
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 512
    epochs: int = 6
    grad_clip_norm: float | None = 1.0
    pos_weight: str | float = "auto"
    validation_fraction: float = 0.15
    holdout_fraction: float = 0.15
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    seed: int = 42
    early_stopping_patience: int | None = None
    key_columns: tuple[str, ...] = ()
    loss: str | None = None
    batch_mode: str = "minibatch"
    lr_schedule: str = "constant"
    lr_step_size: int = 100
    lr_gamma: float = 0.5
    warmup_steps: int = 0
    early_stopping_metric: str = "val_loss"
    early_stopping_min_delta: float = 0.0
    sync_every_k_steps: int = 50
    deterministic: bool = False
    device: str = "auto"
    precision: str = "fp32"
    max_failures: int = 0
    guards: GuardConfig = field(default_factory=GuardConfig)
    sensitivity: SensitivityConfig = field(default_factory=SensitivityConfig)

    def __post_init__(self) -> None:
        # Accept lists (JSON) for the tuple fields, so specs compare and hash the same after a round trip.
        for name in _TUPLE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, str):
                raise SpecError(name, f"expected a list, got the string {value!r}")
            if isinstance(value, list | tuple):
                object.__setattr__(self, name, tuple(value))
        for name in _DICT_FIELDS:
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, {})
            elif not isinstance(value, dict):
                raise SpecError(name, f"expected a mapping, got {type(value).__name__}")
        for name, kind in (("guards", GuardConfig), ("sensitivity", SensitivityConfig)):
            value = getattr(self, name)
            if value is None:
                value = {}
            try:
                object.__setattr__(self, name, kind.from_value(value))
            except KeyError as exc:
                known = sorted(f.name for f in fields(kind))
                raise SpecError(f"{name}.{exc.args[0]}", f"unknown key; known keys are {known}") from None
            except TypeError as exc:
                raise SpecError(name, str(exc)) from None
        # The task's defaults, resolved once so the spec (MLflow params, fingerprint) says what ran.
        try:
            task = self.task_plugin()
        except TaskError:
            return  # reported by validate(), naming the field
        if self.loss is None:
            object.__setattr__(self, "loss", task.default_loss)
        if self.sensitivity.metric is None:
            object.__setattr__(self, "sensitivity", replace(self.sensitivity, metric=task.default_validation_metric))

    # ------------------------------------------------------------------ task
    def task_plugin(self) -> Task:
        """The spec's :class:`~gd_provider.core.tasks.Task` (binary gets ``pos_weight`` as its option)."""
        options = dict(self.task_options)
        if self.task == "binary":
            options.setdefault("pos_weight", self.pos_weight)
            if "pos_weight" in self.task_options:
                raise TaskError("binary", "task_options.pos_weight", "give pos_weight as the spec field pos_weight")
        return get_task(self.task, options)

    @property
    def validation_metrics(self) -> dict[str, bool]:
        """The task's per-epoch validation metrics, ``{name: higher_is_better}``."""
        return dict(self.task_plugin().validation_metrics)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingSpec:
        if not isinstance(data, dict):
            raise SpecError("<spec>", f"expected a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(unknown[0], f"unknown spec key(s) {unknown}; known keys are {sorted(known)}")
        required = {"numeric_features", "categorical_features", "label", "timestamp_column"}
        missing = sorted(required - set(data))
        if missing:
            raise SpecError(missing[0], f"required spec key(s) missing: {missing}")
        spec = cls(**data)
        spec.validate()
        return spec

    @classmethod
    def from_json(cls, text: str) -> TrainingSpec:
        return cls.from_dict(json.loads(text))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for name in _TUPLE_FIELDS:
            out[name] = list(out[name])
        for name in _DICT_FIELDS:
            out[name] = dict(getattr(self, name))
        out["operating_point"] = None if self.operating_point is None else dict(self.operating_point)
        out["guards"] = self.guards.to_dict()
        out["sensitivity"] = self.sensitivity.to_dict()
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def with_overrides(self, overrides: dict[str, Any] | None = None, **kwargs: Any) -> TrainingSpec:
        """A new validated spec with some fields replaced; unknown keys are rejected by name.

        Nested configs (``guards``, ``sensitivity``) are merged: ``{"guards": {"spike_rtol": 3.0}}`` or the
        dotted ``{"guards.spike_rtol": 3.0}`` change that one threshold and keep the others.
        """
        changes = {**(overrides or {}), **kwargs}
        nested: dict[str, dict[str, Any]] = {}
        for key in [k for k in changes if "." in k]:
            head, _, tail = key.partition(".")
            if head not in _NESTED_FIELDS:
                raise SpecError(key, f"only {list(_NESTED_FIELDS)} take dotted keys")
            nested.setdefault(head, {})[tail] = changes.pop(key)
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise SpecError(unknown[0], f"unknown spec key(s) {unknown}; known keys are {sorted(known)}")
        if "task" in changes and changes["task"] != self.task:
            # another task: its own defaults unless given (the old task's loss / metric would not fit)
            changes.setdefault("loss", None)
            if "metric" not in nested.get("sensitivity", {}) and "metric" not in (changes.get("sensitivity") or {}):
                nested.setdefault("sensitivity", {})["metric"] = None
        for name in _DICT_FIELDS:  # a mapping override replaces the mapping (task options, model kwargs)
            if name in changes and changes[name] is None:
                changes[name] = {}
        for name in _NESTED_FIELDS:
            if name not in changes and name not in nested:
                continue
            value = changes.get(name, {})
            if value is None:
                value = {}
            if not isinstance(value, dict):
                if name in nested or not hasattr(value, "to_dict"):
                    raise SpecError(name, f"expected a mapping, got {type(value).__name__}")
                value = value.to_dict()
            changes[name] = {**getattr(self, name).to_dict(), **value, **nested.get(name, {})}
        spec = replace(self, **changes)
        spec.validate()
        return spec

    # ------------------------------------------------------------------ derived
    @property
    def features(self) -> tuple[str, ...]:
        return self.numeric_features + self.categorical_features

    @property
    def required_columns(self) -> tuple[str, ...]:
        return (*self.features, self.label, self.timestamp_column)

    # ------------------------------------------------------------------ validation
    def validate(self) -> TrainingSpec:
        """Raise ``SpecError`` naming the first bad field; returns ``self`` so it can be chained."""
        for name in ("numeric_features", "categorical_features", "key_columns"):
            values = getattr(self, name)
            if not all(isinstance(v, str) and v for v in values):
                raise SpecError(name, f"must be a list of non-empty column names, got {list(values)!r}")
        if not self.numeric_features and not self.categorical_features:
            raise SpecError(
                "numeric_features", "no features: numeric_features and categorical_features are both empty"
            )
        seen: set[str] = set()
        for name in self.features:
            if name in seen:
                where = "numeric_features" if name in self.numeric_features else "categorical_features"
                raise SpecError(where, f"column {name!r} is listed more than once")
            seen.add(name)
        for name in ("label", "timestamp_column"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise SpecError(name, f"must be a non-empty column name, got {value!r}")
            if value in seen:
                raise SpecError(name, f"column {value!r} is also listed as a feature")
        if self.label == self.timestamp_column:
            raise SpecError("label", "label and timestamp_column are the same column")

        task = self._check_task()
        self._check_model()
        if self.model == "mlp":
            if not self.hidden_sizes:
                raise SpecError("hidden_sizes", "an mlp needs at least one hidden layer")
            if not all(_is_int(h) and h > 0 for h in self.hidden_sizes):
                raise SpecError("hidden_sizes", f"must be positive integers, got {list(self.hidden_sizes)!r}")
        _check_number("dropout", self.dropout, lo=0.0, hi=1.0, hi_open=True)
        if self.optimizer not in OPTIMIZERS:
            raise SpecError(
                "optimizer", f"unknown optimizer {self.optimizer!r}; choose one of {list(OPTIMIZERS)}"
            )
        _check_number("lr", self.lr, lo=0.0, lo_open=True)
        _check_number("momentum", self.momentum, lo=0.0, hi=1.0, hi_open=True)
        _check_number("weight_decay", self.weight_decay, lo=0.0)
        _check_int("batch_size", self.batch_size, lo=1)
        _check_int("epochs", self.epochs, lo=1)
        if self.grad_clip_norm is not None:
            _check_number("grad_clip_norm", self.grad_clip_norm, lo=0.0, lo_open=True)
        if isinstance(self.pos_weight, str):
            if self.pos_weight != "auto":
                raise SpecError("pos_weight", f"must be 'auto' or a positive number, got {self.pos_weight!r}")
        else:
            _check_number("pos_weight", self.pos_weight, lo=0.0, lo_open=True)
        if self.task != "binary" and self.pos_weight != "auto":
            raise SpecError("pos_weight", f"applies to the binary task only (task is {self.task!r})")
        if self.operating_point is not None:
            from gd_provider.core.tasks import TaskError
            from gd_provider.core.tasks.operating_point import OperatingPointError

            if not isinstance(self.operating_point, dict):
                raise SpecError("operating_point", f"expected a mapping, got {type(self.operating_point).__name__}")
            try:  # the task says which rules it can serve with (binary: a threshold; multiclass; regression)
                self.task_plugin().check_operating_point(self.operating_point)
            except (OperatingPointError, TaskError) as exc:
                raise SpecError("operating_point", str(exc)) from None
        _check_number(
            "validation_fraction", self.validation_fraction, lo=0.0, hi=1.0, lo_open=True, hi_open=True
        )
        _check_number("holdout_fraction", self.holdout_fraction, lo=0.0, hi=1.0, hi_open=True)
        if self.holdout_fraction == 0:
            raise SpecError(
                "holdout_fraction",
                "must be > 0: every training run holds out its latest rows, on which the evaluation gate "
                "scores the challenger against the champion (an empty holdout cannot be evaluated)",
            )
        if self.validation_fraction + self.holdout_fraction > 0.9:
            raise SpecError(
                "validation_fraction",
                f"validation_fraction + holdout_fraction = {self.validation_fraction + self.holdout_fraction:g} "
                "leaves less than 10% of the rows for training",
            )
        _check_int("num_workers", self.num_workers, lo=1)
        _check_number("cpus_per_worker", self.cpus_per_worker, lo=0.0, lo_open=True)
        _check_int("seed", self.seed, lo=0)
        if self.early_stopping_patience is not None:
            _check_int("early_stopping_patience", self.early_stopping_patience, lo=1)
        if self.loss not in task.losses:
            raise SpecError("loss", f"unknown value {self.loss!r} for the {task.name} task; choose one of "
                            f"{list(task.losses)}")
        _check_choice("batch_mode", self.batch_mode, BATCH_MODES)
        _check_choice("lr_schedule", self.lr_schedule, SCHEDULES)
        _check_int("lr_step_size", self.lr_step_size, lo=1)
        _check_number("lr_gamma", self.lr_gamma, lo=0.0, hi=1.0, lo_open=True)
        _check_int("warmup_steps", self.warmup_steps, lo=0)
        if self.early_stopping_metric not in task.validation_metrics:
            raise SpecError("early_stopping_metric", f"unknown value {self.early_stopping_metric!r}: not a "
                            f"per-epoch metric of the {task.name} task; choose one of {list(task.validation_metrics)}")
        _check_number("early_stopping_min_delta", self.early_stopping_min_delta, lo=0.0)
        _check_int("sync_every_k_steps", self.sync_every_k_steps, lo=1)
        _check_bool("deterministic", self.deterministic)
        _check_choice("device", self.device, DEVICES)
        _check_choice("precision", self.precision, PRECISIONS)
        if self.precision == "bf16" and self.device == "cpu":
            raise SpecError(
                "precision",
                "bf16 autocast is only used on cuda; on device='cpu' use precision='fp32' "
                "(bf16 is never silently downgraded)",
            )
        _check_int("max_failures", self.max_failures, lo=0)
        for name in _NESTED_FIELDS:
            problem = getattr(self, name).problem()
            if problem is not None:
                raise SpecError(f"{name}.{problem[0]}", problem[1])
        if self.sensitivity.metric not in task.validation_metrics:
            raise SpecError("sensitivity.metric", f"unknown metric {self.sensitivity.metric!r}: not a per-epoch "
                            f"metric of the {task.name} task; choose one of {list(task.validation_metrics)}")
        return self

    def _check_task(self) -> Task:
        if not isinstance(self.task, str) or not self.task:
            raise SpecError("task", f"must be a task name or an import path, got {self.task!r}")
        try:
            return self.task_plugin()
        except TaskError as exc:
            field_name = exc.field if exc.field.startswith("task") or exc.field == "pos_weight" else (
                f"task_options.{exc.field}")
            raise SpecError(field_name, str(exc)) from None

    def _check_model(self) -> None:
        from gd_provider.core.models import resolve_factory

        if not isinstance(self.model, str) or not self.model:
            raise SpecError("model", f"must be a model name or an import path, got {self.model!r}")
        if self.model in MODELS:
            if self.model_kwargs:
                raise SpecError("model_kwargs", f"the built-in {self.model!r} takes no model_kwargs (use "
                                "hidden_sizes and dropout); model_kwargs are a user factory's")
            return
        try:
            resolve_factory(self.model)
        except ValueError as exc:
            raise SpecError("model", str(exc)) from None

    def model_kwargs_for_factory(self) -> dict[str, Any]:
        """The keyword arguments the model factory is called with."""
        if self.model == "mlp":
            return {"hidden_sizes": list(self.hidden_sizes), "dropout": self.dropout}
        if self.model == "logistic":
            return {}
        return dict(self.model_kwargs)

    # ------------------------------------------------------------------ derived (runtime)
    def batch_rows(self, rows_per_rank: int) -> int:
        """Rows per optimizer step on one rank for ``rows_per_rank`` training rows on that rank."""
        if self.batch_mode == "full":
            return max(1, rows_per_rank)
        if self.batch_mode == "sgd":
            return 1
        return max(1, min(self.batch_size, rows_per_rank))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SpecError(name, f"unknown value {value!r}; choose one of {list(choices)}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise SpecError(name, f"must be true or false, got {value!r}")


def _check_int(name: str, value: Any, *, lo: int) -> None:
    if not _is_int(value):
        raise SpecError(name, f"must be an integer, got {value!r}")
    if value < lo:
        raise SpecError(name, f"must be >= {lo}, got {value!r}")


def _check_number(
    name: str,
    value: Any,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SpecError(name, f"must be a finite number, got {value!r}")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise SpecError(name, f"must be {'>' if lo_open else '>='} {lo:g}, got {value!r}")
    if hi is not None and (value >= hi if hi_open else value > hi):
        raise SpecError(name, f"must be {'<' if hi_open else '<='} {hi:g}, got {value!r}")
