"""Data-drift check between a reference and a current dataset with Evidently 0.7.23.

Methods and thresholds are always pinned: Evidently's defaults switch silently at 1000 reference
rows (K-S / chi-squared p-values below, Wasserstein / Jensen-Shannon distances above), which would
make the same data pass or fail depending on its size. Large frames are sampled with a fixed seed
(Evidently on 1M x 1M rows x 12 columns takes ~1 min).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.core.datasets import ColumnType
from evidently.legacy.calculations.stattests.registry import get_registered_stattest
from evidently.presets import DataDriftPreset

__all__ = [
    "POLICIES",
    "DriftConfigError",
    "DriftDecision",
    "DriftReport",
    "apply_drift_policy",
    "detect_drift",
    "prediction_drift",
]

POLICIES = ("retrain", "warn", "block")

# Methods whose score is a p-value (drift when score < threshold); the rest are distances (score >= threshold).
# Only used when Evidently's per-column test result is unavailable.
_P_VALUE_METHODS = {
    "ks",
    "chisquare",
    "z",
    "t_test",
    "mannw",
    "anderson",
    "fisher_exact",
    "g_test",
    "cramer_von_mises",
    "epps_singleton",
    "empirical_mmd",
}


class DriftConfigError(ValueError):
    """Bad drift configuration: missing columns, unknown method, bad threshold."""


@dataclass
class DriftReport:
    share_drifted: float
    drifted_columns: list[str]
    dataset_drift: bool
    columns: dict[str, dict[str, Any]]
    """{column: {"method", "score", "threshold", "drifted", "type"}}"""
    method: str
    reference_rows: int
    current_rows: int
    sampled: bool
    html_path: str | None = None
    json_path: str | None = None
    drift_share: float = 0.5
    reference_sample_rows: int = 0
    current_sample_rows: int = 0
    seed: int = 0
    elapsed_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        head = (
            f"{len(self.drifted_columns)} of {len(self.columns)} columns drifted "
            f"(share {self.share_drifted:.2f}, dataset drift at >= {self.drift_share:.2f}: "
            f"{'yes' if self.dataset_drift else 'no'}; {self.method})"
        )
        lines = [head]
        for name in self.drifted_columns:
            c = self.columns[name]
            lines.append(f"  - {name}: {c['method']} score {c['score']:.4g} (threshold {c['threshold']:g})")
        return "\n".join(lines)


@dataclass(frozen=True)
class DriftDecision:
    proceed: bool
    level: Literal["ok", "warn", "block"]
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_method(method: str, column_type: ColumnType, where: str) -> None:
    try:
        get_registered_stattest(method, column_type)
    except ValueError as exc:  # StatTestNotFoundError / StatTestInvalidFeatureTypeError
        raise DriftConfigError(
            f"{where}: drift method {method!r} is not usable for {column_type.value} columns: {exc}"
        ) from exc


def _check_threshold(value: Any, where: str) -> float:
    try:
        threshold = float(value)
    except (TypeError, ValueError) as exc:
        raise DriftConfigError(f"{where}: threshold must be a number, got {value!r}") from exc
    if not threshold > 0:
        raise DriftConfigError(f"{where}: threshold must be > 0, got {threshold}")
    return threshold


def _sample(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    return df.sample(n=n, random_state=seed) if len(df) > n else df


def detect_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    numeric_columns: Sequence[str],
    categorical_columns: Sequence[str],
    numeric_method: str = "wasserstein",
    categorical_method: str = "jensenshannon",
    threshold: float = 0.1,
    per_column: Mapping[str, Mapping[str, Any]] | None = None,
    drift_share: float = 0.5,
    sample_size: int | None = 50_000,
    seed: int = 0,
    out_dir: str | os.PathLike[str] | None = None,
) -> DriftReport:
    """Per-column drift of ``current`` against ``reference`` with pinned methods and thresholds.

    ``threshold`` applies to every column (use ``per_column`` = ``{col: {"method": ..., "threshold": ...}}``
    to override; mind that p-value methods such as ``ks`` want e.g. 0.05 and flag drift *below* it).
    Frames longer than ``sample_size`` are sampled without replacement with ``seed`` (``None`` = no sampling).
    """
    start = time.perf_counter()
    numeric = list(dict.fromkeys(numeric_columns))
    categorical = list(dict.fromkeys(categorical_columns))
    overlap = set(numeric) & set(categorical)
    if overlap:
        raise DriftConfigError(f"columns listed as both numeric and categorical: {sorted(overlap)}")
    columns = numeric + categorical
    if not columns:
        raise DriftConfigError("no columns to check for drift")
    for name, frame in (("reference", reference), ("current", current)):
        if not isinstance(frame, pd.DataFrame):
            raise DriftConfigError(f"{name} must be a pandas DataFrame, got {type(frame).__name__}")
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise DriftConfigError(f"{name} frame lacks drift columns {missing}")
        if len(frame) == 0:
            raise DriftConfigError(f"{name} frame is empty")
        non_numeric = [c for c in numeric if not pd.api.types.is_numeric_dtype(frame[c])]
        if non_numeric:
            raise DriftConfigError(
                f"{name} frame has non-numeric dtypes in numeric drift columns {non_numeric}"
            )
        all_null = [c for c in columns if frame[c].isna().all()]
        if all_null:
            raise DriftConfigError(f"{name} frame has all-null drift columns {all_null}")
        infinite = [c for c in numeric if np.isinf(frame[c].to_numpy(dtype="float64", na_value=np.nan)).any()]
        if infinite:
            raise DriftConfigError(f"{name} frame has +/-Inf in numeric drift columns {infinite}")
    if not 0 < drift_share <= 1:
        raise DriftConfigError(f"drift_share must be in (0, 1], got {drift_share}")
    if sample_size is not None and sample_size < 1:
        raise DriftConfigError(f"sample_size must be >= 1 or None, got {sample_size}")
    threshold = _check_threshold(threshold, "threshold")
    _check_method(numeric_method, ColumnType.Numerical, "numeric_method")
    _check_method(categorical_method, ColumnType.Categorical, "categorical_method")

    per_column = {str(k): dict(v) for k, v in (per_column or {}).items()}
    unknown = [c for c in per_column if c not in columns]
    if unknown:
        raise DriftConfigError(f"per_column overrides name columns that are not checked: {unknown}")
    col_method: dict[str, str] = {}
    col_threshold: dict[str, float] = {}
    for col in columns:
        ctype = ColumnType.Numerical if col in numeric else ColumnType.Categorical
        override = per_column.get(col, {})
        bad_keys = set(override) - {"method", "threshold"}
        if bad_keys:
            raise DriftConfigError(
                f"per_column[{col!r}] has unknown keys {sorted(bad_keys)} (use method, threshold)"
            )
        method = str(override.get("method", numeric_method if col in numeric else categorical_method))
        _check_method(method, ctype, f"per_column[{col!r}]")
        col_method[col] = method
        col_threshold[col] = _check_threshold(override.get("threshold", threshold), f"per_column[{col!r}]")

    ref = _sample(reference[columns], sample_size, seed) if sample_size else reference[columns]
    cur = _sample(current[columns], sample_size, seed) if sample_size else current[columns]
    sampled = len(ref) < len(reference) or len(cur) < len(current)

    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    preset = DataDriftPreset(
        columns=columns,
        drift_share=drift_share,
        num_method=numeric_method,
        cat_method=categorical_method,
        num_threshold=threshold,
        cat_threshold=threshold,
        per_column_method=col_method,
        per_column_threshold=col_threshold,
    )
    snapshot = Report([preset], include_tests=True).run(
        current_data=Dataset.from_pandas(cur.reset_index(drop=True), data_definition=definition),
        reference_data=Dataset.from_pandas(ref.reset_index(drop=True), data_definition=definition),
    )
    snap = snapshot.dict()
    col_results = _parse_snapshot(snap, columns)

    per_col: dict[str, dict[str, Any]] = {}
    for col in columns:
        res = col_results.get(col)
        if res is None:
            raise RuntimeError(f"Evidently returned no drift result for column {col!r}")
        method, thr, score, drifted = res["method"], res["threshold"], res["score"], res["drifted"]
        if method != col_method[col] or abs(thr - col_threshold[col]) > 1e-12:
            raise RuntimeError(
                f"Evidently used {method}/{thr} for {col!r}, expected {col_method[col]}/{col_threshold[col]}"
            )
        if drifted is None:
            drifted = score < thr if method in _P_VALUE_METHODS else score >= thr
        per_col[col] = {
            "method": method,
            "score": float(score),
            "threshold": float(thr),
            "drifted": bool(drifted),
            "type": "numeric" if col in numeric else "categorical",
        }
    drifted_columns = [c for c in columns if per_col[c]["drifted"]]
    share = len(drifted_columns) / len(columns)
    method_desc = f"num={numeric_method},cat={categorical_method}"
    overridden = {c: f"{col_method[c]}@{col_threshold[c]:g}" for c in per_column}
    if overridden:
        method_desc += "," + ",".join(f"{c}={v}" for c, v in overridden.items())

    report = DriftReport(
        share_drifted=share,
        drifted_columns=drifted_columns,
        dataset_drift=share >= drift_share,
        columns=per_col,
        method=method_desc,
        reference_rows=len(reference),
        current_rows=len(current),
        sampled=sampled,
        drift_share=drift_share,
        reference_sample_rows=len(ref),
        current_sample_rows=len(cur),
        seed=seed,
        extra={"threshold": threshold, "evidently_share": col_results.get("__share__")},
    )
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        html_path, json_path = out / "drift.html", out / "drift.json"
        snapshot.save_html(str(html_path))
        report.html_path, report.json_path = str(html_path), str(json_path)
        report.elapsed_s = round(time.perf_counter() - start, 4)
        json_path.write_text(json.dumps({**report.to_dict(), "evidently": snap}, indent=2, default=str))
    report.elapsed_s = round(time.perf_counter() - start, 4)
    return report


def _parse_snapshot(snap: Mapping[str, Any], columns: Sequence[str]) -> dict[str, Any]:
    """Per-column method/threshold/score from ValueDrift metrics, drifted from their tests."""
    by_metric: dict[str, str] = {}
    out: dict[str, Any] = {}
    for metric in snap.get("metrics", []):
        config = metric.get("config", {})
        mtype = config.get("type", "")
        if mtype.endswith(":ValueDrift") and config.get("column") in columns:
            col = config["column"]
            out[col] = {
                "method": config.get("method"),
                "threshold": float(config.get("threshold")),
                "score": float(metric.get("value")),
                "drifted": None,
            }
            by_metric[metric.get("id")] = col
        elif mtype.endswith(":DriftedColumnsCount"):
            value = metric.get("value") or {}
            out["__share__"] = value.get("share")
    for test in snap.get("tests", []):
        col = by_metric.get(str((test.get("metric_config") or {}).get("metric_id")))
        if col is not None and test.get("status") in ("SUCCESS", "FAIL"):
            out[col]["drifted"] = test["status"] == "FAIL"
    return out


def apply_drift_policy(report: DriftReport, policy: str) -> DriftDecision:
    """Turn a drift report into a go/no-go decision.

    * ``retrain``: drift is the reason to retrain: always proceed at level ``ok``; the message says
      whether drift was found.
    * ``warn``: always proceed; level ``warn`` when any column drifted.
    * ``block``: do not proceed when the dataset drifted (share of drifted columns >= drift_share).
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown drift policy {policy!r}; valid policies: {', '.join(POLICIES)}")
    n_cols = len(report.columns)
    cols = ", ".join(report.drifted_columns) if report.drifted_columns else "none"
    facts = (
        f"{len(report.drifted_columns)} of {n_cols} columns drifted (share {report.share_drifted:.2f}, "
        f"dataset-drift threshold {report.drift_share:.2f}); drifted columns: {cols}"
    )
    any_drift = bool(report.drifted_columns)
    if policy == "retrain":
        if report.dataset_drift:
            return DriftDecision(
                True, "ok", f"Dataset drift detected, which is the reason to retrain: {facts}."
            )
        if any_drift:
            return DriftDecision(
                True, "ok", f"Some columns drifted (below dataset drift); retraining proceeds: {facts}."
            )
        return DriftDecision(True, "ok", f"No drift detected; retraining proceeds anyway: {facts}.")
    if policy == "warn":
        if any_drift:
            return DriftDecision(True, "warn", f"Drift detected, proceeding with a warning: {facts}.")
        return DriftDecision(True, "ok", f"No drift detected: {facts}.")
    # block
    if report.dataset_drift:
        return DriftDecision(False, "block", f"Dataset drift detected, blocking retraining: {facts}.")
    if any_drift:
        return DriftDecision(True, "warn", f"Drift below the dataset-drift threshold, proceeding: {facts}.")
    return DriftDecision(True, "ok", f"No drift detected: {facts}.")


def prediction_drift(
    reference_scores: Sequence[Any],
    current_scores: Sequence[Any],
    *,
    method: str = "wasserstein",
    threshold: float = 0.1,
    seed: int = 0,
    sample_size: int = 50_000,
    kind: Literal["numeric", "categorical"] = "numeric",
) -> dict[str, Any]:
    """Drift of the champion's predictions between the reference and the current data.

    The values are what the task compares (:meth:`gd_provider.core.tasks.Task.drift_values`): a score or a
    value (``kind="numeric"``: binary, regression) or a predicted class (``"categorical"``: multiclass).
    Scored by the same Evidently method machinery as the features (a one-column frame ``prediction``), so
    methods and thresholds are pinned the same way; ``method`` must suit ``kind``. Returns ``{method, score,
    threshold, drifted, kind}`` plus ``reference_mean`` / ``current_mean`` (numeric) or
    ``reference_shares`` / ``current_shares`` ({class: share}, categorical).
    """
    if kind not in ("numeric", "categorical"):
        raise DriftConfigError(f"prediction kind must be 'numeric' or 'categorical', got {kind!r}")
    numeric = kind == "numeric"
    if numeric:
        ref = pd.DataFrame({"prediction": np.asarray(reference_scores, dtype=float)})
        cur = pd.DataFrame({"prediction": np.asarray(current_scores, dtype=float)})
    else:
        ref = pd.DataFrame({"prediction": pd.Series(np.asarray(reference_scores, dtype=object)).astype(str)})
        cur = pd.DataFrame({"prediction": pd.Series(np.asarray(current_scores, dtype=object)).astype(str)})
    report = detect_drift(
        ref, cur, numeric_columns=["prediction"] if numeric else [],
        categorical_columns=[] if numeric else ["prediction"],
        numeric_method=method if numeric else "wasserstein", categorical_method="jensenshannon" if numeric else method,
        threshold=threshold, drift_share=1.0, sample_size=sample_size, seed=seed,
    )
    col = report.columns["prediction"]
    out: dict[str, Any] = {"method": col["method"], "score": col["score"], "threshold": col["threshold"],
                           "drifted": col["drifted"], "kind": kind}
    if numeric:
        out.update(reference_mean=float(ref["prediction"].mean()), current_mean=float(cur["prediction"].mean()))
    else:
        out.update(reference_shares=_shares(ref["prediction"]), current_shares=_shares(cur["prediction"]))
    return out


def _shares(values: pd.Series) -> dict[str, float]:
    return {str(k): float(v) for k, v in values.value_counts(normalize=True).sort_index().items()}

