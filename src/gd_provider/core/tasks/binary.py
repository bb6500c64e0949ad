"""``binary``: a 0/1 label, one logit, BCE with ``pos_weight``; ROC/PR AUC and metrics at a threshold."""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
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
from gd_provider.core.tasks.metrics import ranking_metrics


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Ranking metrics and the confusion-derived metrics at ``threshold`` of binary scores."""
    from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

    y = np.asarray(y_true).astype(int)
    p = np.asarray(proba, dtype=float)
    if len(y) != len(p):
        raise ValueError(f"{len(y)} labels but {len(p)} scores")
    if len(y) == 0:
        raise ValueError("the holdout is empty: there is nothing to score the model on")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{int((~np.isfinite(p)).sum())} scores are NaN or infinite")
    if len(np.unique(y)) < 2:
        raise ValueError("the holdout has a single class: ROC/PR AUC are undefined")
    pred = p >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    tn = int(np.sum(~pred & (y == 0)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    bins = np.clip((p * 10).astype(int), 0, 9)
    ece = sum(abs(p[bins == b].mean() - y[bins == b].mean()) * np.mean(bins == b) for b in range(10) if np.any(bins == b))
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "fpr": fp / (fp + tn) if fp + tn else 0.0,
        "log_loss": float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1])),
        "ece": float(ece),
        "positive_rate": float(pred.mean()),
    }


class BinaryTask(Task):
    """Options: ``pos_weight`` (``"auto"`` = negatives / positives of the training split, or a number)."""

    name = "binary"
    losses = ("bce",)
    default_loss = "bce"
    metrics: Mapping[str, bool] = {
        "roc_auc": True, "pr_auc": True, "precision": True, "recall": True, "f1": True,
        "fpr": False, "log_loss": False, "ece": False,
        # at the model's operating point: the share flagged, and (against the champion) the share of rows
        # whose decision changed - both "lower is better" for a bound
        "positive_rate": False, "flip_rate": False,
    }
    validation_metrics: ClassVar[Mapping[str, bool]] = {"val_loss": False, "val_roc_auc": True, "val_pr_auc": True}
    default_validation_metric = "val_roc_auc"
    options: ClassVar[Mapping[str, Any]] = {"pos_weight": "auto"}
    smoke_options = ("positive_rate_bounds", "max_positive_rate_change")
    profile_tolerances = ("positive_rate_band", "positive_rate_abs")

    def check_options(self) -> None:
        pw = self.config["pos_weight"]
        if isinstance(pw, str):
            if pw != "auto":
                raise TaskError(self.name, "pos_weight", f"must be 'auto' or a positive number, got {pw!r}")
        elif isinstance(pw, bool) or not isinstance(pw, int | float) or not math.isfinite(pw) or pw <= 0:
            raise TaskError(self.name, "pos_weight", f"must be 'auto' or a positive number, got {pw!r}")

    # ------------------------------------------------------------------ labels
    def check_labels(self, labels: pd.Series, column: str) -> None:
        super().check_labels(labels, column)
        try:
            as_float = labels.astype("float64")
        except (ValueError, TypeError):
            bad = labels[pd.to_numeric(labels, errors="coerce").isna()]
            raise LabelError(
                f"label column {column!r} must be 0/1 (numbers or booleans), found non-numeric values "
                f"({labels.dtype}) such as {_examples(bad)}"
            ) from None
        values = set(pd.unique(as_float))
        if not values <= {0.0, 1.0}:
            raise LabelError(f"label column {column!r} must be 0/1, found values {sorted(values)[:10]}")

    def encode_labels(self, labels: pd.Series) -> np.ndarray:
        return labels.astype("float32").to_numpy()

    def holdout_problem(self, y: np.ndarray) -> str | None:
        if len(y) == 0:
            return "the holdout is empty"
        classes = sorted(int(v) for v in np.unique(y))
        if len(classes) < 2:
            return f"the holdout has only label {classes[0]}: the evaluation gate needs both classes (ROC/PR AUC)"
        return None

    def label_summary(self, y: np.ndarray) -> dict[str, Any]:
        return {"rows": int(len(y)), "positives": int(np.asarray(y, dtype=np.float64).sum())}

    # ------------------------------------------------------------------ training
    def fit_state(self, y_train: np.ndarray) -> dict[str, Any]:
        positives = float(np.asarray(y_train, dtype=np.float64).sum())
        negatives = float(len(y_train) - positives)
        pw = self.config["pos_weight"]
        if pw == "auto":
            if positives == 0 or negatives == 0:
                raise LabelError(
                    f"the training split has {int(positives)} positive and {int(negatives)} negative labels; "
                    "pos_weight='auto' needs both"
                )
            pw = negatives / positives
        return {"pos_weight": float(pw)}

    def make_loss(self, loss: str, state: Mapping[str, Any], device: Any) -> Any:
        import torch
        from torch import nn

        if loss != "bce":
            raise TaskError(self.name, "loss", f"unknown loss {loss!r}; choose one of {list(self.losses)}")
        return flat_loss(nn.BCEWithLogitsLoss(pos_weight=torch.tensor(float(state["pos_weight"]), device=device)))

    def validation_scores(self, outputs: Any, state: Mapping[str, Any]) -> np.ndarray:
        import torch

        return torch.sigmoid(outputs.float().reshape(len(outputs))).cpu().numpy()

    def scores(self, outputs: np.ndarray, state: Mapping[str, Any]) -> np.ndarray:
        logits = np.asarray(outputs, dtype=np.float64).reshape(len(outputs))
        proba = 1.0 / (1.0 + np.exp(-np.clip(logits, -700.0, 700.0)))
        point = state.get("operating_point")
        if point:  # calibrated as chosen in training (core.tasks.operating_point)
            from gd_provider.core.tasks.operating_point import OperatingPoint

            proba = OperatingPoint.from_dict(point).scores(proba)
        return proba

    @staticmethod
    def serving_threshold(state: Mapping[str, Any]) -> float | None:
        """The threshold of the model's operating point (None: it has none, the caller's default applies)."""
        point = state.get("operating_point")
        return float(point["threshold"]) if point else None

    def serving_rule(self, state: Mapping[str, Any]) -> float | None:
        return self.serving_threshold(state)

    # the operating point: a threshold for a false-positive-rate budget, a minimum precision, a target positive
    # rate, a cost matrix or a fixed value, optionally after calibration (core.tasks.operating_point)
    def check_operating_point(self, objective: Mapping[str, Any]) -> dict[str, Any]:
        from gd_provider.core.tasks.operating_point import check_objective

        return check_objective(dict(objective))

    def choose_operating_point(self, y: np.ndarray, scores: np.ndarray, objective: Mapping[str, Any]) -> dict[str, Any]:
        from gd_provider.core.tasks.operating_point import choose_operating_point

        return choose_operating_point(y, scores, dict(objective)).to_dict()

    def epoch_metrics(self, y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
        roc, pr = ranking_metrics(y, scores)
        return {"val_roc_auc": roc, "val_pr_auc": pr}

    # ------------------------------------------------------------------ decisions
    def decisions(self, scores: np.ndarray, threshold: float | None = None) -> np.ndarray:
        return (np.asarray(scores, dtype=float) >= (0.5 if threshold is None else threshold)).astype(np.int64)

    def gate_metrics(self, y: np.ndarray, scores: np.ndarray, threshold: float | None = None) -> dict[str, float]:
        return classification_metrics(y, scores, 0.5 if threshold is None else threshold)

    # ------------------------------------------------------------------ validation
    def label_expectations(self, column: str) -> list[dict[str, Any]]:
        return [*super().label_expectations(column),
                _exp("expect_column_values_to_be_in_set", "binary_label", column=column, value_set=[0, 1])]

    def label_profile(self, labels: pd.Series) -> dict[str, Any]:
        values = labels.dropna()
        classes = sorted(_py(v) for v in values.unique())
        rate = float(values.astype("float64").mean()) if len(values) and set(classes) <= {0, 1} else None
        return {"classes": classes, "positive_rate": rate}

    def profile_label_expectations(self, column: str, profile: Mapping[str, Any], tolerances: Any,
                                   make: Any) -> list[dict[str, Any]]:
        classes = list(profile.get("classes") or [])
        if not classes:
            return []
        exps = [make("expect_column_values_to_be_in_set", "label_values", column=column, value_set=classes)]
        if len(classes) >= 2:
            exps.append(make("expect_column_distinct_values_to_contain_set", "both_classes", column=column,
                             value_set=classes))
        rate = profile.get("positive_rate")
        if rate is not None:
            if tolerances.positive_rate_abs is not None:
                low, high = rate - tolerances.positive_rate_abs, rate + tolerances.positive_rate_abs
            else:
                low, high = rate / tolerances.positive_rate_band, rate * tolerances.positive_rate_band
            exps.append(make("expect_column_mean_to_be_between", "positive_rate", column=column,
                             min_value=_round(max(0.0, low), "down"), max_value=_round(min(1.0, high), "up")))
        return exps

    # ------------------------------------------------------------------ smoke test
    def smoke_problems(self, scores: np.ndarray, previous: np.ndarray | None, options: Mapping[str, Any],
                       threshold: float | None = None) -> list[str]:
        proba = np.asarray(scores, dtype=float)
        problems = super().smoke_problems(proba, previous, options)
        if problems:
            return problems
        if len(proba) and (proba.min() < 0 or proba.max() > 1):
            problems.append(f"scores outside [0, 1]: min {proba.min():.4f}, max {proba.max():.4f}")
        rate = float(np.mean(self.decisions(proba, threshold))) if len(proba) else 0.0
        bounds = options.get("positive_rate_bounds")
        if bounds is not None:
            lo, hi = bounds
            if not lo <= rate <= hi:
                problems.append(f"positive-prediction rate {rate:.4f} outside [{lo}, {hi}]")
        change = options.get("max_positive_rate_change")
        expected = options.get("expected_positive_rate")
        if expected is not None and change is not None:
            # what the gate measured for this model at its own operating point, on the holdout
            if abs(rate - expected) > change:
                problems.append(f"positive-prediction rate {rate:.4f} at the operating point (threshold "
                                f"{0.5 if threshold is None else threshold:.4f}) vs {expected:.4f} the evaluation gate "
                                f"measured on the holdout: off by more than {change}")
        elif previous is not None and change is not None:
            prev_rate = float(np.mean(self.decisions(np.asarray(previous, dtype=float), threshold)))
            if abs(rate - prev_rate) > change:
                problems.append(f"positive-prediction rate {rate:.4f} vs the previous champion's {prev_rate:.4f} "
                                f"on the same canary: change above {change}")
        return problems

    def smoke_summary(self, scores: np.ndarray, threshold: float | None = None) -> dict[str, Any]:
        proba = np.asarray(scores, dtype=float)
        return {"positive_rate": float(np.mean(self.decisions(proba, threshold))) if len(proba) else 0.0}


def _py(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _round(value: float, direction: str, digits: int = 6) -> float:
    """``value`` to ``digits`` significant digits, rounded outward (as core.profile rounds its bounds)."""
    if value == 0 or not math.isfinite(value):
        return float(value)
    exponent = math.floor(math.log10(abs(value))) - (digits - 1)
    rounding = ROUND_FLOOR if direction == "down" else ROUND_CEILING
    return float(Decimal(repr(float(value))).quantize(Decimal(1).scaleb(exponent), rounding=rounding))
