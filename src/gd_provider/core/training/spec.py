"""What to train and how: a small, JSON-serializable, validated description of one training run.

Plain Python on purpose: the spec travels from the Airflow task to the Ray workers and into MLflow params.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from gd_provider.demo import schema as demo_schema

MODELS = ("mlp", "logistic")
OPTIMIZERS = ("adam", "adamw", "sgd")
# Columns used (when present) to break timestamp ties, so splits are the same on every run.
DEFAULT_KEY_COLUMNS = (demo_schema.TRANSACTION_ID, *demo_schema.ENTITY_KEYS)

_TUPLE_FIELDS = ("numeric_features", "categorical_features", "hidden_sizes", "key_columns")


class SpecError(ValueError):
    """A training spec is malformed; the message names the offending field."""

    def __init__(self, field_name: str, message: str):
        self.field = field_name
        super().__init__(f"training spec field {field_name!r}: {message}")


@dataclass(frozen=True)
class TrainingSpec:
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

    def __post_init__(self) -> None:
        # Accept lists (JSON) for the tuple fields, so specs compare and hash the same after a round trip.
        for name in _TUPLE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, str):
                raise SpecError(name, f"expected a list, got the string {value!r}")
            if isinstance(value, list | tuple):
                object.__setattr__(self, name, tuple(value))

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
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def with_overrides(self, overrides: dict[str, Any] | None = None, **kwargs: Any) -> TrainingSpec:
        """A new validated spec with some fields replaced; unknown keys are rejected by name."""
        changes = {**(overrides or {}), **kwargs}
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise SpecError(unknown[0], f"unknown spec key(s) {unknown}; known keys are {sorted(known)}")
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
        return self


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
