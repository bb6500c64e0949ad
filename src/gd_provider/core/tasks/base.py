"""The task plug-in: everything that depends on *what* is predicted (plain core: no Airflow, no demo).

A task turns labels into training targets, owns the loss and the model's output width, turns the model's
raw outputs into scores and decisions, computes the per-epoch validation metrics and the gate's metrics
(with their direction), derives the label expectations of validation (and the champion-profile label
checks), judges a smoke test's scores, and says what "prediction drift" compares. The engine, the guards,
checkpoints and the Ray path never look at labels themselves.

Built in: ``binary``, ``multiclass``, ``regression`` (see :mod:`gd_provider.core.tasks`). A user task is a
subclass of :class:`Task` in the user's own module, named in a config by import path
(``training.task: mypkg.tasks:RankingTask``) with its options under ``training.task_options``.

Shapes: labels are encoded to a float32 vector ``y`` (a class index for multiclass); the model maps
``(N, input_dim)`` to ``(N, output_width)`` or, for width 1, ``(N,)`` / ``(N, 1)``. *Scores* are what the
MLflow model's ``predict`` returns: a 1-D probability (binary), an ``(N, K)`` probability matrix
(multiclass), a 1-D value on the label's scale (regression).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np


class _LazyPandas:
    """pandas, imported on first use: the training engine (a bare torch + numpy image, Ray workers) imports
    the tasks but never needs pandas; label checks and profiles do."""

    def __getattr__(self, name: str) -> Any:
        import pandas

        return getattr(pandas, name)


pd: Any = _LazyPandas()


class TaskError(ValueError):
    """A task is unknown or its options are invalid; the message names the task and the field."""

    def __init__(self, task: str, field: str, message: str):
        self.task, self.field = task, field
        super().__init__(f"task {task!r}, {field}: {message}")


class LabelError(ValueError):
    """Labels a task cannot train or be judged on; the message names the column and the task."""


def _examples(values: pd.Series, limit: int = 5) -> str:
    return ", ".join(repr(v) for v in pd.unique(values)[:limit])


class Task(ABC):
    """One kind of prediction. Subclass it, set the class attributes, implement the abstract methods.

    Class attributes:

    * ``name``: how configs and messages call the task.
    * ``losses``: the loss names ``training.loss`` may take; ``default_loss`` is used when it is unset.
    * ``metrics``: the gate's metrics on the holdout, ``{name: higher_is_better}``.
    * ``validation_metrics``: the per-epoch metrics (``val_loss`` and the task's own ``val_*``),
      ``{name: higher_is_better}``; ``default_validation_metric`` is the one the sensitivity check uses when
      none is configured.
    * ``options``: the keys ``task_options`` may hold, with their defaults.
    """

    name: ClassVar[str] = "task"
    losses: ClassVar[tuple[str, ...]] = ()
    default_loss: ClassVar[str] = ""
    metrics: Mapping[str, bool] = {}  # a class attribute; a task whose metrics depend on its options sets its own
    validation_metrics: ClassVar[Mapping[str, bool]] = {"val_loss": False}
    default_validation_metric: ClassVar[str] = "val_loss"
    options: ClassVar[Mapping[str, Any]] = {}
    # what the prediction-drift check compares: "numeric" (a score/value) or "categorical" (a class)
    prediction_kind: ClassVar[str] = "numeric"

    def __init__(self, **options: Any):
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise TaskError(self.name, f"task_options.{unknown[0]}",
                            f"unknown option; the {self.name} task takes {sorted(self.options) or 'no options'}")
        self.config: dict[str, Any] = {**self.options, **options}
        self.check_options()

    # ------------------------------------------------------------------ options
    def check_options(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Raise :class:`TaskError` naming the first bad option (called by ``__init__``)."""

    def to_dict(self) -> dict[str, Any]:
        """``{"task": <name or import path>, "options": {...}}``: enough to rebuild the task."""
        return {"task": getattr(self, "import_name", self.name), "options": dict(self.config)}

    def metric_direction(self, metric: str, where: str = "gate") -> bool:
        """``higher_is_better`` of a gate metric; raises naming the task when it is not one of its metrics."""
        if metric not in self.metrics:
            raise TaskError(self.name, where, f"metric {metric!r} is not a {self.name} metric; "
                            f"{self.name} metrics are {sorted(self.metrics)}")
        return self.metrics[metric]

    # ------------------------------------------------------------------ labels
    @property
    def output_width(self) -> int:
        """Width of the model's output layer."""
        return 1

    def check_labels(self, labels: pd.Series, column: str) -> None:
        """Raise :class:`LabelError` (naming ``column``) when ``labels`` cannot be trained on.

        The default refuses missing values; subclasses add dtype and value checks."""
        missing = int(labels.isna().sum())
        if missing:
            raise LabelError(f"label column {column!r} has {missing} missing value(s) ({self.name} task)")

    @abstractmethod
    def encode_labels(self, labels: pd.Series) -> np.ndarray:
        """Labels as the float32 vector the metrics compare scores with (checked labels only)."""

    def holdout_problem(self, y: np.ndarray) -> str | None:
        """Why the gate could not score a holdout with these encoded labels (``None``: it can)."""
        return None if len(y) else "the holdout is empty"

    def label_summary(self, y: np.ndarray) -> dict[str, Any]:
        """A few numbers about encoded labels for the split record (counts, rates, moments)."""
        return {"rows": int(len(y))}

    # ------------------------------------------------------------------ training
    def fit_state(self, y_train: np.ndarray) -> dict[str, Any]:
        """What the task learns from the training labels (JSON-safe), e.g. a class weight or a target
        scale; saved with the model and given back to :meth:`make_loss`, :meth:`targets`, :meth:`scores`."""
        return {}

    def targets(self, y: np.ndarray, state: Mapping[str, Any]) -> np.ndarray:
        """Encoded labels as the loss sees them (e.g. standardized for regression). Default: unchanged."""
        return np.asarray(y, dtype=np.float32)

    @abstractmethod
    def make_loss(self, loss: str, state: Mapping[str, Any], device: Any) -> Any:
        """A ``torch.nn.Module`` computing the mean loss of ``(outputs, targets)``."""

    @abstractmethod
    def scores(self, outputs: np.ndarray, state: Mapping[str, Any]) -> np.ndarray:
        """Raw model outputs (float64 numpy) → scores (what the MLflow model's ``predict`` returns)."""

    def validation_scores(self, outputs: Any, state: Mapping[str, Any]) -> np.ndarray:
        """Scores of a torch tensor of outputs for the per-epoch metrics (default: :meth:`scores`)."""
        return self.scores(outputs.double().cpu().numpy(), state)

    @abstractmethod
    def epoch_metrics(self, y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
        """The per-epoch validation metrics other than ``val_loss`` (keys of ``validation_metrics``)."""

    # ------------------------------------------------------------------ the operating point
    # (``training.operating_point``): the serving decision rule, chosen on the validation split for a declared
    # objective, saved in the task state as ``operating_point`` and handed to decisions() / gate_metrics() as
    # their ``threshold`` argument (the rule: a threshold for binary, a mapping for other tasks)
    def check_operating_point(self, objective: Mapping[str, Any]) -> dict[str, Any]:
        """``objective`` normalized; raise :class:`TaskError` naming what is wrong. Default: the task has none."""
        raise TaskError(self.name, "operating_point", f"the {self.name} task has no operating point to choose")

    def choose_operating_point(self, y: np.ndarray, scores: np.ndarray, objective: Mapping[str, Any]) -> dict[str, Any]:
        """The rule (JSON-safe, with its ``validation`` metrics) meeting ``objective`` on the validation split's
        encoded labels ``y`` and scores; raise :class:`TaskError` when it cannot be met."""
        raise TaskError(self.name, "operating_point", f"the {self.name} task has no operating point to choose")

    def serving_rule(self, state: Mapping[str, Any]) -> Any:
        """What the model decides with (from its saved state), as :meth:`decisions` takes it; None: the default."""
        return state.get("operating_point") or None

    def comparison_rule(self, champion_rule: Any, challenger_rule: Any) -> Any:
        """The rule the champion is measured with next to the challenger: its own (default). A task whose rule
        only measures (regression's tolerance) uses the challenger's when the champion has none."""
        return champion_rule

    def flip_rate(self, champion_scores: np.ndarray, challenger_scores: np.ndarray, champion_rule: Any = None,
                  challenger_rule: Any = None) -> float:
        """The share of rows whose decision changes from the champion's to the challenger's (each with its rule)."""
        before = self.decisions(champion_scores, champion_rule)
        after = self.decisions(challenger_scores, challenger_rule)
        return float(np.mean(before != after)) if len(after) else math.nan

    # ------------------------------------------------------------------ decisions and metrics
    @abstractmethod
    def decisions(self, scores: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """What a consumer acts on: 0/1 (binary at ``threshold``), a class index, a value. ``threshold``:
        the model's rule (:meth:`serving_rule`); None: the task's default."""

    @abstractmethod
    def gate_metrics(self, y: np.ndarray, scores: np.ndarray, threshold: float | None = None) -> dict[str, float]:
        """Every metric of ``metrics`` (and informative extras) on a holdout; raises ``ValueError`` when
        they are undefined (an empty holdout, non-finite scores)."""

    # ------------------------------------------------------------------ validation
    def label_expectations(self, column: str) -> list[dict[str, Any]]:
        """Great Expectations checks of the label column every night (not null, type, value set)."""
        return [_exp("expect_column_values_to_not_be_null", f"{self.name}_label_not_null", column=column)]

    def label_profile(self, labels: pd.Series) -> dict[str, Any]:
        """A JSON-safe summary of a champion's training labels, for :meth:`profile_label_expectations`."""
        return {}

    def profile_label_expectations(self, column: str, profile: Mapping[str, Any], tolerances: Any,
                                   make: Any) -> list[dict[str, Any]]:
        """Checks of tonight's labels against the champion's training labels (``profile`` from
        :meth:`label_profile`), within ``tolerances`` (:class:`gd_provider.core.profile.Tolerances`);
        ``make(expectation_type, check_name, **kwargs)`` builds one expectation."""
        return []

    # ------------------------------------------------------------------ smoke test and drift
    def smoke_problems(self, scores: np.ndarray, previous: np.ndarray | None, options: Mapping[str, Any],
                       threshold: float | None = None) -> list[str]:
        """What is wrong with a promoted model's scores on a canary (``previous``: the previous champion's on
        the same rows). Default: non-finite scores."""
        bad = int((~np.isfinite(np.asarray(scores, dtype=float))).sum())
        return [f"{bad} of {len(scores)} scores are NaN/inf"] if bad else []

    def drift_values(self, scores: np.ndarray) -> np.ndarray:
        """The 1-D values the prediction-drift check compares between reference and current data."""
        return np.asarray(scores, dtype=float).reshape(len(scores), -1)[:, 0]

    def smoke_summary(self, scores: np.ndarray, threshold: float | None = None) -> dict[str, Any]:
        """A few numbers about a canary's scores for the smoke test's result (rates, shares, means)."""
        return {}

    # the smoke_test config keys this task reads (others are refused when the config is parsed)
    smoke_options: ClassVar[tuple[str, ...]] = ()
    # the label-only validation tolerances (core.profile.Tolerances) profile_label_expectations reads
    # (positive_rate_band / positive_rate_abs / label_mean_shift_std: another one, not at its default, is refused)
    profile_tolerances: ClassVar[tuple[str, ...]] = ()


def _exp(kind: str, tag: str, **kwargs: Any) -> dict[str, Any]:
    return {"type": kind, "kwargs": kwargs, "meta": {"gd_check": f"task:{tag}", "gd_origin": "task"}}


def finite_or_raise(scores: np.ndarray) -> np.ndarray:
    values = np.asarray(scores, dtype=float)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{int((~np.isfinite(values)).sum())} scores are NaN or infinite")
    return values


def safe_div(a: float, b: float) -> float:
    return a / b if b else 0.0


def nan_if_empty(values: np.ndarray, fn: Any) -> float:
    return float(fn(values)) if len(values) else math.nan


_FLAT_LOSS: Any = None


def flat_loss(inner: Any) -> Any:
    """Wrap a loss on ``(N,)`` targets so it accepts ``(N,)`` or ``(N, 1)`` outputs (a user model's head).

    torch is imported here, not at module import: configs are validated (tasks built) when a DAG is parsed."""
    global _FLAT_LOSS
    if _FLAT_LOSS is None:
        from torch import nn

        class FlatLoss(nn.Module):
            def __init__(self, inner: nn.Module):
                super().__init__()
                self.inner = inner

            def forward(self, outputs: Any, targets: Any) -> Any:
                return self.inner(outputs.reshape(targets.shape), targets)

        _FLAT_LOSS = FlatLoss
    return _FLAT_LOSS(inner)
