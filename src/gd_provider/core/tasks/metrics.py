"""Metric arithmetic shared by the built-in tasks (numpy; scikit-learn where it is installed)."""

from __future__ import annotations

import math

import numpy as np


def ranking_metrics(y_true: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(ROC AUC, PR AUC = average precision); NaN when undefined (one class, non-finite scores).

    scikit-learn computes them when it is installed; otherwise ``ranking_metrics_numpy`` (the same
    definitions), so the loop also runs where only torch and numpy are (e.g. a bare GPU image)."""
    if len(y_true) == 0 or len(np.unique(y_true)) < 2 or not np.all(np.isfinite(scores)):
        return math.nan, math.nan
    try:
        from sklearn.metrics import average_precision_score, roc_auc_score
    except Exception:  # not installed, or built against another numpy (a ValueError): same numbers without it
        return ranking_metrics_numpy(y_true, scores)
    return float(roc_auc_score(y_true, scores)), float(average_precision_score(y_true, scores))


def ranking_metrics_numpy(y_true: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """ROC AUC (trapezoids over the ROC curve) and average precision (sum over distinct thresholds of
    ``(R_n - R_{n-1}) * P_n``) - scikit-learn's definitions, ties included - for two-class ``y_true``."""
    y = np.asarray(y_true, dtype=np.float64)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    s, y = np.asarray(scores, dtype=np.float64)[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    pos, neg = tps[-1], fps[-1]
    tpr, fpr = np.r_[0.0, tps / pos], np.r_[0.0, fps / neg]
    roc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
    precision, recall = tps / (tps + fps), tps / pos
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return roc, ap


def confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """``k x k`` counts, rows = true class index, columns = predicted class index."""
    return np.bincount(np.asarray(y, dtype=np.int64) * k + np.asarray(pred, dtype=np.int64),
                       minlength=k * k).reshape(k, k)


def per_class_recall_precision_f1(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(axis=1).astype(float), cm.sum(axis=0).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / np.where(support > 0, support, 1), np.nan)
        precision = np.where(predicted > 0, tp / np.where(predicted > 0, predicted, 1), 0.0)
        f1 = np.where(precision + np.nan_to_num(recall) > 0,
                      2 * precision * np.nan_to_num(recall) / (precision + np.nan_to_num(recall) + 1e-300), 0.0)
    return recall, precision, f1


def macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over the classes present in the labels (scikit-learn's ``average='macro'`` over the labels
    that occur, with F1 = 0 for a class never predicted)."""
    recall, _, f1 = per_class_recall_precision_f1(cm)
    present = ~np.isnan(recall)
    return float(f1[present].mean()) if present.any() else math.nan


def multiclass_log_loss(y: np.ndarray, proba: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(proba[np.arange(len(y)), np.asarray(y, dtype=np.int64)], eps, 1.0)
    return float(-np.mean(np.log(p)))


def regression_metrics(y: np.ndarray, pred: np.ndarray, quantiles: tuple[float, ...] = ()) -> dict[str, float]:
    y = np.asarray(y, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    err = pred - y
    abs_err = np.abs(err)
    ss_tot = float(np.sum((y - y.mean()) ** 2)) if len(y) else 0.0
    out = {
        "rmse": float(np.sqrt(np.mean(err**2))) if len(y) else math.nan,
        "mae": float(abs_err.mean()) if len(y) else math.nan,
        "r2": 1.0 - float(np.sum(err**2)) / ss_tot if ss_tot > 0 else math.nan,
    }
    for q in quantiles:
        out[quantile_metric(q)] = float(np.quantile(abs_err, q)) if len(y) else math.nan
    return out


def quantile_metric(q: float) -> str:
    """``abs_error_p90`` for 0.9: the q-quantile of the absolute error."""
    return f"abs_error_p{round(q * 100, 4):g}".replace(".", "_")
