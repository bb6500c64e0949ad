"""What to train and how: a small, JSON-serializable, validated description of one training run.

Plain Python on purpose: the spec travels from the Airflow task to the Ray workers and into MLflow params.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from gd_provider.core.training.guards import GuardConfig
from gd_provider.core.training.schedule import SCHEDULES
from gd_provider.demo import schema as demo_schema

MODELS = ("mlp", "logistic")
OPTIMIZERS = ("adam", "adamw", "sgd")
LOSSES = ("bce",)
BATCH_MODES = ("minibatch", "full", "sgd")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
# Per-epoch validation metrics, and whether bigger is better.
VALIDATION_METRICS = {"val_loss": False, "val_roc_auc": True, "val_pr_auc": True}
# Columns used (when present) to break timestamp ties, so splits are the same on every run.
DEFAULT_KEY_COLUMNS = (demo_schema.TRANSACTION_ID, *demo_schema.ENTITY_KEYS)

_TUPLE_FIELDS = ("numeric_features", "categorical_features", "hidden_sizes", "key_columns")
_NESTED_FIELDS = ("guards", "sensitivity")


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
    metric: str = "val_roc_auc"
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
        if self.metric not in VALIDATION_METRICS:
            return "metric", f"unknown metric {self.metric!r}; choose one of {list(VALIDATION_METRICS)}"
        if not _is_number(self.max_spread) or self.max_spread <= 0:
            return "max_spread", f"must be a positive number, got {self.max_spread!r}"
        return None


@dataclass(frozen=True)
class TrainingSpec:
    """One training run. Notes on the less obvious fields:

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
    model: str = "mlp"
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
    key_columns: tuple[str, ...] = field(default=DEFAULT_KEY_COLUMNS)
    loss: str = "bce"
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

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_demo(cls, **overrides: Any) -> TrainingSpec:
        """The fraud demo's spec (columns from ``gd_provider.demo.schema``), validated."""
        base = cls(
            numeric_features=tuple(demo_schema.NUMERIC_FEATURES),
            categorical_features=tuple(demo_schema.CATEGORICAL_FEATURES),
            label=demo_schema.LABEL,
            timestamp_column=demo_schema.TIMESTAMP,
        )
        return base.with_overrides(overrides)

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

        if self.model not in MODELS:
            raise SpecError("model", f"unknown model {self.model!r}; choose one of {list(MODELS)}")
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
        _check_choice("loss", self.loss, LOSSES)
        _check_choice("batch_mode", self.batch_mode, BATCH_MODES)
        _check_choice("lr_schedule", self.lr_schedule, SCHEDULES)
        _check_int("lr_step_size", self.lr_step_size, lo=1)
        _check_number("lr_gamma", self.lr_gamma, lo=0.0, hi=1.0, lo_open=True)
        _check_int("warmup_steps", self.warmup_steps, lo=0)
        _check_choice("early_stopping_metric", self.early_stopping_metric, tuple(VALIDATION_METRICS))
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
        return self

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
