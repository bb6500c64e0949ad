"""``multiclass``: a label from a declared set of classes, K logits, softmax cross-entropy."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from gd_provider.core.tasks.base import (  # pd: pandas on first use
    LabelError,
    Task,
    TaskError,
    _examples,
    _exp,
    pd,
)
from gd_provider.core.tasks.metrics import (
    confusion,
    macro_f1,
    multiclass_log_loss,
    per_class_recall_precision_f1,
)

_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def class_metric_name(prefix: str, value: Any) -> str:
    """``recall_late`` for class ``late``: a metric name safe for MLflow and configs."""
    return f"{prefix}_{_UNSAFE.sub('_', str(value))}"


class MulticlassTask(Task):
    """Options: ``classes`` (required: the label's possible values, in the order of the model's outputs),
    ``class_weight`` (``null`` or ``"balanced"``: inverse class frequency in the training split)."""

    name = "multiclass"
    losses = ("cross_entropy",)
    default_loss = "cross_entropy"
    validation_metrics: ClassVar[Mapping[str, bool]] = {
        "val_loss": False, "val_accuracy": True, "val_macro_f1": True,
    }
    default_validation_metric = "val_accuracy"
    options: ClassVar[Mapping[str, Any]] = {"classes": None, "class_weight": None}
    prediction_kind = "categorical"
    smoke_options = ("max_class_share_change",)

    def check_options(self) -> None:
        classes = self.config["classes"]
        if not isinstance(classes, list | tuple) or len(classes) < 2:
            raise TaskError(self.name, "task_options.classes",
                            f"give the label's classes as a list of at least two values, got {classes!r}")
        if not all(isinstance(c, str | int) and not isinstance(c, bool) for c in classes):
            raise TaskError(self.name, "task_options.classes", f"classes must be strings or integers, got {classes!r}")
        if len(set(classes)) != len(classes):
            raise TaskError(self.name, "task_options.classes", f"a class is listed twice in {list(classes)!r}")
        if self.config["class_weight"] not in (None, "balanced"):
            raise TaskError(self.name, "task_options.class_weight",
                            f"must be null or 'balanced', got {self.config['class_weight']!r}")
        self.config["classes"] = list(classes)
        self.classes: list[Any] = list(classes)
        names = [class_metric_name("recall", c) for c in self.classes]
        if len(set(names)) != len(names):
            raise TaskError(self.name, "task_options.classes", f"classes {self.classes!r} give clashing metric names")
        # per class: recall and precision at the model's rule; flip_rate: vs the champion's decisions
        self.metrics = {"accuracy": True, "macro_f1": True, "log_loss": False, "flip_rate": False,
                        **dict.fromkeys(names, True),
                        **dict.fromkeys((class_metric_name("precision", c) for c in self.classes), True)}

    @property
    def output_width(self) -> int:
        return len(self.classes)

    # ------------------------------------------------------------------ labels
    def _codes(self, labels: pd.Series) -> np.ndarray:
        values = labels.to_numpy()
        lookup = {c: i for i, c in enumerate(self.classes)}
        if all(isinstance(c, int) for c in self.classes) and pd.api.types.is_float_dtype(labels.dtype):
            whole = np.isfinite(values) & (np.mod(values, 1) == 0)
            return np.array([lookup.get(int(v), -1) if ok else -1 for v, ok in zip(values, whole, strict=True)])
        return np.array([lookup.get(v.item() if isinstance(v, np.generic) else v, -1) for v in values])

    def check_labels(self, labels: pd.Series, column: str) -> None:
        super().check_labels(labels, column)
        codes = self._codes(labels)
        bad = labels[codes < 0]
        if len(bad):
            raise LabelError(f"label column {column!r} has {len(bad)} value(s) outside the declared classes "
                             f"{self.classes!r} of the multiclass task, such as {_examples(bad)}")

    def encode_labels(self, labels: pd.Series) -> np.ndarray:
        return self._codes(labels).astype(np.float32)

    def holdout_problem(self, y: np.ndarray) -> str | None:
        if len(y) == 0:
            return "the holdout is empty"
        present = np.unique(y)
        if len(present) < 2:
            return (f"the holdout has only class {self.classes[int(present[0])]!r}: the evaluation gate needs at "
                    "least two classes")
        return None

    def label_summary(self, y: np.ndarray) -> dict[str, Any]:
        counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=len(self.classes))
        return {"rows": int(len(y)), "class_counts": {str(c): int(n) for c, n in zip(self.classes, counts, strict=True)}}

    # ------------------------------------------------------------------ training
    def fit_state(self, y_train: np.ndarray) -> dict[str, Any]:
        counts = np.bincount(np.asarray(y_train, dtype=np.int64), minlength=len(self.classes)).astype(float)
        state: dict[str, Any] = {"classes": self.classes, "train_counts": counts.astype(int).tolist()}
        if self.config["class_weight"] == "balanced":
            weights = np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 0.0)
            state["class_weights"] = weights.tolist()
        return state

    def make_loss(self, loss: str, state: Mapping[str, Any], device: Any) -> Any:
        import torch
        from torch import nn

        if loss != "cross_entropy":
            raise TaskError(self.name, "loss", f"unknown loss {loss!r}; choose one of {list(self.losses)}")
        weights = state.get("class_weights")
        weight = torch.tensor(weights, dtype=torch.float32, device=device) if weights else None
        return _CrossEntropy(nn.CrossEntropyLoss(weight=weight))

    def scores(self, outputs: np.ndarray, state: Mapping[str, Any]) -> np.ndarray:
        logits = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
        if logits.shape[1] != len(self.classes):
            raise ValueError(f"the model has {logits.shape[1]} outputs but the multiclass task declares "
                             f"{len(self.classes)} classes {self.classes!r}")
        shifted = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        return e / e.sum(axis=1, keepdims=True)

    def epoch_metrics(self, y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
        if len(y) == 0 or not np.all(np.isfinite(scores)):
            return {"val_accuracy": math.nan, "val_macro_f1": math.nan}
        pred = scores.argmax(axis=1)
        cm = confusion(y, pred, len(self.classes))
        return {"val_accuracy": float(np.trace(cm) / len(y)), "val_macro_f1": macro_f1(cm)}

    # ------------------------------------------------------------------ the operating point
    # argmax (the default), or per-class thresholds: a class with a threshold is predicted only when its
    # probability reaches it (then the most probable such class wins); rows where no class qualifies get the
    # most probable class without a threshold, else ``fallback_class``
    OBJECTIVES: ClassVar[tuple[str, ...]] = ("argmax", "class_thresholds", "min_precision", "max_fpr")

    def check_operating_point(self, objective: Mapping[str, Any]) -> dict[str, Any]:
        where = "operating_point"
        data = dict(objective or {})
        fallback = data.pop("fallback_class", None)
        unknown = sorted(set(data) - set(self.OBJECTIVES))
        if unknown:
            raise TaskError(self.name, where, f"unknown key(s) {unknown}; give one of {list(self.OBJECTIVES)} "
                            "(and fallback_class)")
        if len(data) > 1:
            raise TaskError(self.name, where, f"give exactly one objective, got {sorted(data)}")
        if not data or "argmax" in data:
            if data.get("argmax", True) is not True:
                raise TaskError(self.name, f"{where}.argmax", "must be true (or give per-class thresholds)")
            if fallback is not None:
                raise TaskError(self.name, f"{where}.fallback_class", "applies to per-class thresholds only")
            return {"argmax": True}
        (key, per_class), = data.items()
        if not isinstance(per_class, Mapping) or not per_class:
            raise TaskError(self.name, f"{where}.{key}", f"give {{class: number}} for some of {self.classes!r}, "
                            f"got {per_class!r}")
        lookup = {str(c): c for c in self.classes}
        out: dict[str, float] = {}
        for c, value in per_class.items():
            if str(c) not in lookup:
                raise TaskError(self.name, f"{where}.{key}", f"{c!r} is not one of the classes {self.classes!r}")
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
                raise TaskError(self.name, f"{where}.{key}.{c}", f"must be a number in (0, 1), got {value!r}")
            out[str(c)] = float(value)
        if fallback is not None and str(fallback) not in lookup:
            raise TaskError(self.name, f"{where}.fallback_class", f"{fallback!r} is not one of the classes "
                            f"{self.classes!r}")
        if len(out) == len(self.classes) and fallback is None:
            raise TaskError(self.name, f"{where}.fallback_class", "every class has a threshold: name the class rows "
                            "get when none reaches its threshold")
        return {key: out, **({"fallback_class": str(fallback)} if fallback is not None else {})}

    def choose_operating_point(self, y: np.ndarray, scores: np.ndarray, objective: Mapping[str, Any]) -> dict[str, Any]:
        from gd_provider.core.tasks.operating_point import _curve

        objective = self.check_operating_point(objective)
        proba = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
        codes = np.asarray(y, dtype=np.int64)
        if not np.all(np.isfinite(proba)):
            raise TaskError(self.name, "operating_point", "non-finite validation scores: cannot choose a rule")
        index = {str(c): i for i, c in enumerate(self.classes)}
        thresholds: dict[str, float] = {}
        key = next(iter(k for k in objective if k != "fallback_class"))
        if key == "class_thresholds":
            thresholds = dict(objective[key])
        elif key in ("min_precision", "max_fpr"):
            for c, value in objective[key].items():
                is_c = (codes == index[c]).astype(np.float64)
                if is_c.sum() == 0 or is_c.sum() == len(is_c):
                    raise TaskError(self.name, f"operating_point.{key}.{c}", "the validation split needs rows of "
                                    f"class {c!r} and of other classes to choose its threshold")
                cut, tps, fps = _curve(is_c, proba[:, index[c]])
                recall = tps / is_c.sum()
                if key == "min_precision":
                    ok = tps / np.maximum(tps + fps, 1) >= value - 1e-12
                else:
                    ok = fps / (len(is_c) - is_c.sum()) <= value + 1e-12
                if not ok.any():
                    raise TaskError(self.name, f"operating_point.{key}.{c}", f"no threshold on the validation split "
                                    f"meets {key}={value} for class {c!r}")
                thresholds[c] = float(cut[int(np.flatnonzero(ok)[np.argmax(recall[ok])])])
        rule: dict[str, Any] = {"objective": objective}
        if thresholds:
            rule["class_thresholds"] = thresholds
            rule["fallback_class"] = objective.get("fallback_class")
        pred = self.decisions(proba, rule if thresholds else None)
        cm = confusion(codes, pred, len(self.classes))
        rec, prec, _ = per_class_recall_precision_f1(cm)
        rule["validation"] = {"accuracy": float(np.trace(cm) / max(1, len(codes))), "macro_f1": macro_f1(cm),
                              **{class_metric_name("recall", c): float(r) for c, r in zip(self.classes, rec, strict=True)},
                              **{class_metric_name("precision", c): float(q)
                                 for c, q in zip(self.classes, prec, strict=True)}}
        return rule

    # ------------------------------------------------------------------ decisions
    def decisions(self, scores: np.ndarray, threshold: Any = None) -> np.ndarray:
        proba = np.asarray(scores, dtype=float).reshape(len(scores), -1)
        rule = threshold if isinstance(threshold, Mapping) else None
        per_class = (rule or {}).get("class_thresholds")
        if not per_class:
            return proba.argmax(axis=1)
        cuts = np.full(proba.shape[1], -np.inf)
        index = {str(c): i for i, c in enumerate(self.classes)}
        for c, t in per_class.items():
            cuts[index[str(c)]] = float(t)
        masked = np.where(proba >= cuts, proba, -np.inf)
        pred = masked.argmax(axis=1)
        none = ~np.isfinite(masked).any(axis=1)
        if none.any():
            fallback = (rule or {}).get("fallback_class")
            pred[none] = index[str(fallback)] if fallback is not None else proba[none].argmax(axis=1)
        return pred

    def gate_metrics(self, y: np.ndarray, scores: np.ndarray, threshold: float | None = None) -> dict[str, float]:
        proba = np.asarray(scores, dtype=float).reshape(len(scores), -1)
        if len(y) != len(proba):
            raise ValueError(f"{len(y)} labels but {len(proba)} scores")
        if len(y) == 0:
            raise ValueError("the holdout is empty: there is nothing to score the model on")
        if not np.all(np.isfinite(proba)):
            raise ValueError(f"{int((~np.isfinite(proba)).any(axis=1).sum())} score rows are NaN or infinite")
        if proba.shape[1] != len(self.classes):
            raise ValueError(f"the model scores {proba.shape[1]} classes but the task declares {len(self.classes)}")
        cm = confusion(y, self.decisions(proba, threshold), len(self.classes))  # at the model's own rule
        recall, precision, _ = per_class_recall_precision_f1(cm)
        out = {"accuracy": float(np.trace(cm) / len(y)), "macro_f1": macro_f1(cm),
               "log_loss": multiclass_log_loss(y, proba)}
        for c, r, p in zip(self.classes, recall, precision, strict=True):
            out[class_metric_name("recall", c)] = float(r)
            out[class_metric_name("precision", c)] = float(p)
        return out

    # ------------------------------------------------------------------ validation
    def label_expectations(self, column: str) -> list[dict[str, Any]]:
        return [*super().label_expectations(column),
                _exp("expect_column_values_to_be_in_set", "declared_classes", column=column, value_set=self.classes)]

    def label_profile(self, labels: pd.Series) -> dict[str, Any]:
        codes = self._codes(labels.dropna())
        codes = codes[codes >= 0]
        counts = np.bincount(codes, minlength=len(self.classes))
        total = max(1, int(counts.sum()))
        return {"present": [c for c, n in zip(self.classes, counts, strict=True) if n],
                "shares": {str(c): float(n / total) for c, n in zip(self.classes, counts, strict=True)}}

    def profile_label_expectations(self, column: str, profile: Mapping[str, Any], tolerances: Any,
                                   make: Any) -> list[dict[str, Any]]:
        present = list(profile.get("present") or [])
        if len(present) < 2:
            return []
        return [make("expect_column_distinct_values_to_contain_set", "champion_classes", column=column,
                     value_set=present)]

    # ------------------------------------------------------------------ smoke test and drift
    def smoke_problems(self, scores: np.ndarray, previous: np.ndarray | None, options: Mapping[str, Any],
                       threshold: float | None = None) -> list[str]:
        proba = np.asarray(scores, dtype=float).reshape(len(scores), -1)
        problems = super().smoke_problems(proba, previous, options)
        if problems:
            return problems
        if proba.shape[1] != len(self.classes):
            return [f"the model scores {proba.shape[1]} classes, the task declares {len(self.classes)}"]
        if len(proba) and (proba.min() < 0 or proba.max() > 1 or np.abs(proba.sum(axis=1) - 1).max() > 1e-4):
            problems.append("class probabilities are outside [0, 1] or do not sum to 1")
        change = options.get("max_class_share_change")
        if previous is not None and change is not None and len(proba):
            share = self._shares(proba, threshold)
            before = self._shares(np.asarray(previous, dtype=float).reshape(len(previous), -1))
            moved = {c: s - b for c, s, b in zip(self.classes, share, before, strict=True) if abs(s - b) > change}
            if moved:
                problems.append("predicted class shares moved vs the previous champion on the same canary by more "
                                f"than {change}: " + ", ".join(f"{c!r} {d:+.4f}" for c, d in moved.items()))
        return problems

    def _shares(self, proba: np.ndarray, rule: Any = None) -> np.ndarray:
        return np.bincount(self.decisions(proba, rule), minlength=len(self.classes)) / max(1, len(proba))

    def smoke_summary(self, scores: np.ndarray, threshold: float | None = None) -> dict[str, Any]:
        proba = np.asarray(scores, dtype=float).reshape(len(scores), -1)
        shares = self._shares(proba, threshold)
        return {"class_shares": {str(c): float(s) for c, s in zip(self.classes, shares, strict=True)}}

    def drift_values(self, scores: np.ndarray) -> np.ndarray:
        idx = np.asarray(scores, dtype=float).reshape(len(scores), -1).argmax(axis=1)
        return np.array([str(self.classes[i]) for i in idx], dtype=object)


def _CrossEntropy(inner: Any) -> Any:  # noqa: N802 - a module factory
    from torch import nn

    class CrossEntropy(nn.Module):
        """Cross-entropy of ``(N, K)`` logits against float class indices (the engine's float32 targets)."""

        def __init__(self, inner: nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, outputs: Any, targets: Any) -> Any:
            return self.inner(outputs.float().reshape(len(targets), -1), targets.long())

    return CrossEntropy(inner)
