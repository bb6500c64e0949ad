"""``regression``: a numeric target, one output, MSE / MAE / Huber on the standardized target."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from gd_provider.core.tasks.base import (  # pd: pandas on first use
    LabelError,
    Task,
    TaskError,
    _examples,
    _exp,
    flat_loss,
    pd,
)
from gd_provider.core.tasks.metrics import quantile_metric, regression_metrics

NUMERIC_TYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "Int8", "Int16",
                 "Int32", "Int64", "float16", "float32", "float64", "Float32", "Float64", "int", "float"]


class RegressionTask(Task):
    """Options: ``error_quantiles`` (default ``[0.5, 0.9]``: the gate's ``abs_error_pNN`` metrics),
    ``huber_delta`` (for ``loss: huber``, in standard deviations of the target), ``standardize_target``
    (default true: the network learns ``(y - mean) / std`` of the training split; scores are on the
    label's scale either way)."""

    name = "regression"
    losses = ("mse", "mae", "huber")
    default_loss = "mse"
    validation_metrics: ClassVar[Mapping[str, bool]] = {
        "val_loss": False, "val_rmse": False, "val_mae": False, "val_r2": True,
    }
    default_validation_metric = "val_r2"
    options: ClassVar[Mapping[str, Any]] = {"error_quantiles": [0.5, 0.9], "huber_delta": 1.0,
                                           "standardize_target": True}
    smoke_options = ("prediction_bounds", "max_mean_shift_std")
    # gate metrics measured at a declared tolerance only (a config bounding them must declare one)
    rule_metrics: ClassVar[tuple[str, ...]] = ("within_tolerance", "flip_rate")
    rule_help: ClassVar[str] = "tolerance: {abs: <label units>, rel: <share of |label|>}"
    profile_tolerances = ("label_mean_shift_std",)

    def check_options(self) -> None:
        qs = self.config["error_quantiles"]
        if not isinstance(qs, list | tuple) or not all(
            isinstance(q, int | float) and not isinstance(q, bool) and 0 < q < 1 for q in qs
        ):
            raise TaskError(self.name, "task_options.error_quantiles",
                            f"must be a list of numbers in (0, 1), got {qs!r}")
        self.config["error_quantiles"] = [float(q) for q in qs]
        delta = self.config["huber_delta"]
        if isinstance(delta, bool) or not isinstance(delta, int | float) or not delta > 0:
            raise TaskError(self.name, "task_options.huber_delta", f"must be a positive number, got {delta!r}")
        if not isinstance(self.config["standardize_target"], bool):
            raise TaskError(self.name, "task_options.standardize_target", "must be true or false")
        # within_tolerance and flip_rate: with an operating point's tolerance (training.operating_point)
        self.metrics = {"rmse": False, "mae": False, "r2": True, "within_tolerance": True, "flip_rate": False,
                        **{quantile_metric(q): False for q in self.config["error_quantiles"]}}

    # ------------------------------------------------------------------ labels
    def check_labels(self, labels: pd.Series, column: str) -> None:
        super().check_labels(labels, column)
        if pd.api.types.is_bool_dtype(labels.dtype) or not pd.api.types.is_numeric_dtype(labels.dtype):
            numbers = pd.to_numeric(labels, errors="coerce")
            bad = labels[numbers.isna()]
            raise LabelError(
                f"label column {column!r} must be numeric for the regression task, found {labels.dtype} values"
                + (f" such as {_examples(bad)}" if len(bad) else "")
            )
        values = labels.to_numpy(dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise LabelError(f"label column {column!r} has {int((~np.isfinite(values)).sum())} infinite value(s)")

    def encode_labels(self, labels: pd.Series) -> np.ndarray:
        return labels.to_numpy(dtype=np.float32)

    def holdout_problem(self, y: np.ndarray) -> str | None:
        if len(y) < 2:
            return f"the holdout has {len(y)} row(s): the evaluation gate needs at least two (R²)"
        return None

    def label_summary(self, y: np.ndarray) -> dict[str, Any]:
        v = np.asarray(y, dtype=np.float64)
        return {"rows": int(len(v)), "mean": float(v.mean()) if len(v) else None,
                "std": float(v.std()) if len(v) else None}

    # ------------------------------------------------------------------ training
    def fit_state(self, y_train: np.ndarray) -> dict[str, Any]:
        v = np.asarray(y_train, dtype=np.float64)
        if not self.config["standardize_target"]:
            return {"mean": 0.0, "std": 1.0}
        std = float(v.std()) if len(v) else 1.0
        return {"mean": float(v.mean()) if len(v) else 0.0, "std": std if std > 0 and math.isfinite(std) else 1.0}

    def targets(self, y: np.ndarray, state: Mapping[str, Any]) -> np.ndarray:
        return ((np.asarray(y, dtype=np.float64) - state["mean"]) / state["std"]).astype(np.float32)

    def make_loss(self, loss: str, state: Mapping[str, Any], device: Any) -> Any:
        from torch import nn

        if loss == "mse":
            inner: Any = nn.MSELoss()
        elif loss == "mae":
            inner = nn.L1Loss()
        elif loss == "huber":
            inner = nn.HuberLoss(delta=float(self.config["huber_delta"]))
        else:
            raise TaskError(self.name, "loss", f"unknown loss {loss!r}; choose one of {list(self.losses)}")
        return flat_loss(inner)

    def scores(self, outputs: np.ndarray, state: Mapping[str, Any]) -> np.ndarray:
        out = np.asarray(outputs, dtype=np.float64).reshape(len(outputs))
        return out * float(state["std"]) + float(state["mean"])

    def epoch_metrics(self, y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
        if len(y) == 0 or not np.all(np.isfinite(scores)):
            return {"val_rmse": math.nan, "val_mae": math.nan, "val_r2": math.nan}
        m = regression_metrics(y, scores)
        return {"val_rmse": m["rmse"], "val_mae": m["mae"], "val_r2": m["r2"]}

    # ------------------------------------------------------------------ the operating point
    # none (the value is the decision), or a declared business tolerance: a prediction is good enough when
    # |prediction - label| <= abs + rel * |label| (gate metric ``within_tolerance``), and a decision "flips"
    # when the challenger's prediction moves from the champion's by more than abs + rel * |champion's|
    def check_operating_point(self, objective: Mapping[str, Any]) -> dict[str, Any]:
        data = dict(objective or {})
        unknown = sorted(set(data) - {"tolerance"})
        if unknown or not data:
            raise TaskError(self.name, "operating_point", "give tolerance: {abs: <label units>, rel: <share of "
                            f"|label|>}} (or no operating_point), got {objective!r}")
        tol = data["tolerance"]
        if not isinstance(tol, Mapping) or not tol or set(tol) - {"abs", "rel"}:
            raise TaskError(self.name, "operating_point.tolerance", f"give {{abs: <number>, rel: <number>}} (either or "
                            f"both), got {tol!r}")
        for k, v in tol.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise TaskError(self.name, f"operating_point.tolerance.{k}", f"must be a number >= 0, got {v!r}")
        if not any(tol.values()):
            raise TaskError(self.name, "operating_point.tolerance", "abs and rel are both 0: nothing is tolerated")
        return {"tolerance": {"abs": float(tol.get("abs", 0.0)), "rel": float(tol.get("rel", 0.0))}}

    def choose_operating_point(self, y: np.ndarray, scores: np.ndarray, objective: Mapping[str, Any]) -> dict[str, Any]:
        objective = self.check_operating_point(objective)
        rule = {"objective": objective, "tolerance": objective["tolerance"]}
        pred = np.asarray(scores, dtype=float).reshape(len(scores))
        rule["validation"] = {"within_tolerance": _within(np.asarray(y, dtype=float), pred, rule["tolerance"])}
        return rule

    def comparison_rule(self, champion_rule: Any, challenger_rule: Any) -> Any:
        # a tolerance is the business's, not the model's: a champion trained without one is judged by it too
        return champion_rule if _tolerance(champion_rule) else challenger_rule

    def flip_rate(self, champion_scores: np.ndarray, challenger_scores: np.ndarray, champion_rule: Any = None,
                  challenger_rule: Any = None) -> float:
        tol = _tolerance(challenger_rule) or _tolerance(champion_rule)
        if tol is None:
            return math.nan
        before = np.asarray(champion_scores, dtype=float).reshape(len(champion_scores))
        after = np.asarray(challenger_scores, dtype=float).reshape(len(challenger_scores))
        return float(np.mean(np.abs(after - before) > tol["abs"] + tol["rel"] * np.abs(before))) if len(after) else math.nan

    # ------------------------------------------------------------------ decisions
    def decisions(self, scores: np.ndarray, threshold: Any = None) -> np.ndarray:
        return np.asarray(scores, dtype=float)

    def gate_metrics(self, y: np.ndarray, scores: np.ndarray, threshold: float | None = None) -> dict[str, float]:
        pred = np.asarray(scores, dtype=float).reshape(len(scores))
        if len(y) != len(pred):
            raise ValueError(f"{len(y)} labels but {len(pred)} scores")
        if len(y) == 0:
            raise ValueError("the holdout is empty: there is nothing to score the model on")
        if not np.all(np.isfinite(pred)):
            raise ValueError(f"{int((~np.isfinite(pred)).sum())} predictions are NaN or infinite")
        out = regression_metrics(y, pred, tuple(self.config["error_quantiles"]))
        tol = _tolerance(threshold)
        if tol is not None:  # the share of rows within the declared business tolerance
            out["within_tolerance"] = _within(np.asarray(y, dtype=float), pred, tol)
        out["mean_prediction"] = float(pred.mean())
        out["mean_label"] = float(np.mean(y))
        return out

    # ------------------------------------------------------------------ validation
    def label_expectations(self, column: str) -> list[dict[str, Any]]:
        return [*super().label_expectations(column),
                _exp("expect_column_values_to_be_in_type_list", "numeric_label", column=column,
                     type_list=NUMERIC_TYPES)]

    def label_profile(self, labels: pd.Series) -> dict[str, Any]:
        v = pd.to_numeric(labels, errors="coerce").dropna().to_numpy(dtype=np.float64)
        if not len(v):
            return {}
        return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())}

    def profile_label_expectations(self, column: str, profile: Mapping[str, Any], tolerances: Any,
                                   make: Any) -> list[dict[str, Any]]:
        if not profile:
            return []
        lo, hi = profile["min"], profile["max"]
        span = hi - lo
        widen = tolerances.range_widening * (span if span > 0 else max(abs(hi), 1.0))
        low = max(lo - widen, 0.0) if lo >= 0 else lo - widen
        shift = getattr(tolerances, "label_mean_shift_std", 1.0) * (profile["std"] or abs(profile["mean"]) or 1.0)
        return [
            make("expect_column_values_to_be_between", "label_range", column=column,
                 min_value=math.floor(low * 1e6) / 1e6, max_value=math.ceil((hi + widen) * 1e6) / 1e6),
            make("expect_column_mean_to_be_between", "label_mean", column=column,
                 min_value=math.floor((profile["mean"] - shift) * 1e6) / 1e6,
                 max_value=math.ceil((profile["mean"] + shift) * 1e6) / 1e6),
        ]

    # ------------------------------------------------------------------ smoke test
    def smoke_problems(self, scores: np.ndarray, previous: np.ndarray | None, options: Mapping[str, Any],
                       threshold: float | None = None) -> list[str]:
        pred = np.asarray(scores, dtype=float).reshape(len(scores))
        problems = super().smoke_problems(pred, previous, options)
        if problems:
            return problems
        bounds = options.get("prediction_bounds")
        if bounds is not None and len(pred):
            lo, hi = bounds
            outside = int(((pred < lo) | (pred > hi)).sum())
            if outside:
                problems.append(f"{outside} of {len(pred)} predictions outside [{lo}, {hi}] "
                                f"(min {pred.min():.4f}, max {pred.max():.4f})")
        shift = options.get("max_mean_shift_std")
        if previous is not None and shift is not None and len(pred):
            prev = np.asarray(previous, dtype=float).reshape(len(previous))
            scale = float(prev.std()) or 1.0
            moved = (float(pred.mean()) - float(prev.mean())) / scale
            if abs(moved) > shift:
                problems.append(f"mean prediction {pred.mean():.4f} vs the previous champion's {prev.mean():.4f} on "
                                f"the same canary: {moved:+.2f} of its standard deviations, above {shift}")
        return problems

    def smoke_summary(self, scores: np.ndarray, threshold: float | None = None) -> dict[str, Any]:
        pred = np.asarray(scores, dtype=float).reshape(len(scores))
        return {"mean_prediction": float(pred.mean()) if len(pred) else None}


def _tolerance(rule: Any) -> dict[str, float] | None:
    tol = rule.get("tolerance") if isinstance(rule, Mapping) else None
    return dict(tol) if tol else None


def _within(y: np.ndarray, pred: np.ndarray, tol: Mapping[str, float]) -> float:
    if not len(y):
        return math.nan
    return float(np.mean(np.abs(pred - y) <= tol["abs"] + tol["rel"] * np.abs(y)))

