"""The serving decision rule of a binary model: a threshold chosen on the validation split for a declared
objective, optionally after calibrating the scores (plain numpy; no Airflow, no torch).

Objectives (exactly one key):

* ``max_fpr: 0.02`` — the threshold with the highest recall whose false-positive rate is at most 2 %;
* ``min_precision: 0.5`` — the highest-recall threshold whose precision is at least 50 %;
* ``target_positive_rate: 0.03`` — flag (about) 3 % of the rows;
* ``costs: {fp: 1, fn: 20}`` — the threshold with the least expected cost ``fp * FP + fn * FN``;
* ``threshold: 0.5`` — a fixed threshold (what a model without an objective uses).

Calibration (``calibration: none | temperature | platt | isotonic``) is fitted on the validation split
first; ECE (10 equal-width bins) before and after is reported. The rule (``OperatingPoint``) is saved
with the model and applied by its scorer: ``decide(calibrate(p)) = calibrate(p) >= threshold``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

OBJECTIVES = ("max_fpr", "min_precision", "target_positive_rate", "costs", "threshold")
CALIBRATIONS = ("none", "temperature", "platt", "isotonic")
_EPS = 1e-7


class OperatingPointError(ValueError):
    """An objective cannot be met or is malformed; the message names it."""


def check_objective(objective: dict[str, Any] | None, where: str = "operating_point") -> dict[str, Any]:
    """Validate ``{objective: value, calibration?: name}``; returns it normalized (``threshold: 0.5`` if none)."""
    data = dict(objective or {})
    calibration = data.pop("calibration", "none")
    if calibration not in CALIBRATIONS:
        raise OperatingPointError(f"{where}.calibration: unknown {calibration!r}; choose one of {list(CALIBRATIONS)}")
    keys = [k for k in data if k in OBJECTIVES]
    unknown = sorted(set(data) - set(OBJECTIVES))
    if unknown:
        raise OperatingPointError(f"{where}: unknown key(s) {unknown}; give one of {list(OBJECTIVES)} "
                                  "(and optionally calibration)")
    if len(keys) > 1:
        raise OperatingPointError(f"{where}: give exactly one objective, got {keys}")
    if not keys:
        data = {"threshold": 0.5}
        keys = ["threshold"]
    key = keys[0]
    value = data[key]
    if key == "costs":
        if not isinstance(value, dict) or set(value) != {"fp", "fn"} or not all(
            _number(v) and v >= 0 for v in value.values()
        ) or not (value["fp"] > 0 or value["fn"] > 0):
            raise OperatingPointError(f"{where}.costs: give {{fp: <cost>, fn: <cost>}} with non-negative numbers, "
                                      f"got {value!r}")
    elif not _number(value) or not 0 < value < 1:
        raise OperatingPointError(f"{where}.{key}: must be a number in (0, 1), got {value!r}")
    return {key: value, "calibration": calibration}


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


# ---------------------------------------------------------------------------------------------- calibration
def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(q) - np.log1p(-q)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -700, 700)))


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """ECE over ``bins`` equal-width probability bins (the gate's ``ece``)."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if not len(p):
        return math.nan
    idx = np.clip((p * bins).astype(int), 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    sum_p = np.bincount(idx, weights=p, minlength=bins)
    sum_y = np.bincount(idx, weights=y, minlength=bins)
    nz = count > 0
    return float(np.sum(np.abs(sum_p[nz] - sum_y[nz])) / len(p))


def _fit_affine(z: np.ndarray, y: np.ndarray, *, slope_only: bool, iters: int = 100) -> tuple[float, float]:
    """Newton's method on the log-loss of ``sigmoid(a * z + b)`` (``b = 0`` when ``slope_only``)."""
    a, b = 1.0, 0.0
    for _ in range(iters):
        p = _sigmoid(a * z + b)
        r = p - y
        w = np.maximum(p * (1 - p), 1e-12)
        ga, gb = float(np.sum(r * z)), float(np.sum(r))
        haa, hab, hbb = float(np.sum(w * z * z)) + 1e-9, float(np.sum(w * z)), float(np.sum(w)) + 1e-9
        if slope_only:
            step_a, step_b = ga / haa, 0.0
        else:
            det = haa * hbb - hab * hab
            if det <= 0:
                break
            step_a, step_b = (hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det
        a, b = a - step_a, b - step_b
        if abs(step_a) < 1e-10 and abs(step_b) < 1e-10:
            break
    return float(a), float(b)


def _pav(x: np.ndarray, y: np.ndarray) -> tuple[list[float], list[float]]:
    """Isotonic regression of ``y`` on ``x`` (pool adjacent violators): block upper edges and values."""
    order = np.argsort(x, kind="mergesort")
    xs, ys = x[order], y[order]
    # pool ties of x first
    uniq, start = np.unique(xs, return_index=True)
    sums = np.add.reduceat(ys, start)
    counts = np.diff(np.r_[start, len(xs)]).astype(float)
    values: list[float] = []
    weights: list[float] = []
    edges: list[float] = []
    for u, s, c in zip(uniq, sums, counts, strict=True):
        values.append(s / c)
        weights.append(c)
        edges.append(float(u))
        while len(values) > 1 and values[-2] > values[-1]:
            w = weights[-2] + weights[-1]
            v = (values[-2] * weights[-2] + values[-1] * weights[-1]) / w
            values[-2:] = [v]
            weights[-2:] = [w]
            edges[-2:] = [edges[-1]]
    return edges, [float(v) for v in values]


@dataclass
class Calibrator:
    """``kind`` and its fitted parameters; ``apply`` maps raw P(y=1) to calibrated P(y=1)."""

    kind: str = "none"
    params: dict[str, Any] = field(default_factory=dict)

    def apply(self, p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, dtype=np.float64)
        if self.kind == "none":
            return p
        if self.kind == "temperature":
            return _sigmoid(_logit(p) / self.params["temperature"])
        if self.kind == "platt":
            return _sigmoid(self.params["a"] * _logit(p) + self.params["b"])
        if self.kind == "isotonic":
            edges, values = np.asarray(self.params["edges"]), np.asarray(self.params["values"])
            idx = np.clip(np.searchsorted(edges, p, side="left"), 0, len(values) - 1)
            return values[idx]
        raise OperatingPointError(f"unknown calibration {self.kind!r}")

    @classmethod
    def fit(cls, kind: str, y: np.ndarray, p: np.ndarray) -> Calibrator:
        y = np.asarray(y, dtype=np.float64)
        if kind == "none":
            return cls()
        if kind == "temperature":
            a, _ = _fit_affine(_logit(p), y, slope_only=True)
            return cls("temperature", {"temperature": 1.0 / a if a > 1e-6 else 1e6})
        if kind == "platt":
            a, b = _fit_affine(_logit(p), y, slope_only=False)
            return cls("platt", {"a": a, "b": b})
        if kind == "isotonic":
            edges, values = _pav(np.asarray(p, dtype=np.float64), y)
            return cls("isotonic", {"edges": edges, "values": values})
        raise OperatingPointError(f"unknown calibration {kind!r}; choose one of {list(CALIBRATIONS)}")


# ---------------------------------------------------------------------------------------------- threshold
def _curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate thresholds (distinct scores, descending) with TP and FP counts of ``p >= t``."""
    order = np.argsort(-p, kind="mergesort")
    s, yy = p[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(yy)[last]
    fps = (last + 1) - tps
    return s[last], tps, fps


@dataclass
class OperatingPoint:
    """The decision rule saved with a binary model."""

    threshold: float
    objective: dict[str, Any]
    calibrator: Calibrator = field(default_factory=Calibrator)
    validation: dict[str, float] = field(default_factory=dict)  # metrics at the threshold on the validation split

    def scores(self, raw: np.ndarray) -> np.ndarray:
        return self.calibrator.apply(raw)

    def decide(self, scores: np.ndarray) -> np.ndarray:
        return (np.asarray(scores, dtype=np.float64) >= self.threshold).astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["calibrator"] = {"kind": self.calibrator.kind, "params": self.calibrator.params}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> OperatingPoint:
        if not data:
            return cls(0.5, {"threshold": 0.5, "calibration": "none"})
        cal = data.get("calibrator") or {}
        return cls(float(data["threshold"]), dict(data.get("objective") or {}),
                   Calibrator(cal.get("kind", "none"), dict(cal.get("params") or {})), dict(data.get("validation") or {}))

    def describe(self) -> str:
        (key, value), = [(k, v) for k, v in self.objective.items() if k != "calibration"]
        cal = self.objective.get("calibration", "none")
        return (f"threshold {self.threshold:.4f} for {key}={value}" + (f" after {cal} calibration" if cal != "none"
                else ""))


def choose_operating_point(y_val: np.ndarray, raw_scores: np.ndarray, objective: dict[str, Any] | None) -> OperatingPoint:
    """Fit the calibration and choose the threshold on the validation split for ``objective``."""
    objective = check_objective(objective)
    y = np.asarray(y_val, dtype=np.float64)
    raw = np.asarray(raw_scores, dtype=np.float64)
    if len(y) == 0 or len(np.unique(y)) < 2:
        raise OperatingPointError("the validation split needs both classes to choose an operating point")
    if not np.all(np.isfinite(raw)):
        raise OperatingPointError("non-finite validation scores: cannot choose an operating point")
    calibrator = Calibrator.fit(objective["calibration"], y, raw)
    p = calibrator.apply(raw)
    thresholds, tps, fps = _curve(y, p)
    pos, neg = float(y.sum()), float(len(y) - y.sum())
    recall, fpr = tps / pos, fps / neg
    precision = tps / np.maximum(tps + fps, 1)
    rate = (tps + fps) / len(y)
    key = next(k for k in objective if k != "calibration")
    value = objective[key]
    if key == "threshold":
        threshold = float(value)
    else:
        if key == "max_fpr":
            ok = fpr <= value + 1e-12
        elif key == "min_precision":
            ok = precision >= value - 1e-12
        elif key == "target_positive_rate":
            ok = rate <= value + 1e-12
        else:  # costs
            ok = np.ones(len(thresholds), dtype=bool)
        if not ok.any():
            raise OperatingPointError(f"operating_point.{key}={value}: no threshold on the validation split meets it "
                                      f"(best: FPR {fpr.min():.4f}, precision {precision.max():.4f})")
        if key == "costs":
            cost = value["fp"] * fps + value["fn"] * (pos - tps)
            i = int(np.argmin(np.where(ok, cost, np.inf)))
        else:
            # among the feasible thresholds, the one with the highest recall (then the highest threshold)
            i = int(np.flatnonzero(ok)[np.argmax(recall[ok])])
        threshold = float(thresholds[i])
    pred = p >= threshold
    tp, fp = float(np.sum(pred & (y == 1))), float(np.sum(pred & (y == 0)))
    validation = {
        "fpr": fp / neg, "recall": tp / pos, "precision": tp / (tp + fp) if tp + fp else 0.0,
        "positive_rate": float(pred.mean()),
        "ece_before": expected_calibration_error(y, raw), "ece_after": expected_calibration_error(y, p),
    }
    return OperatingPoint(threshold, objective, calibrator, validation)
