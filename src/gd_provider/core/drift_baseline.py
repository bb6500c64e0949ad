"""Baseline mode of the drift check: tonight's drift scores judged against their own recent history.

On real data the same fixed threshold blocks an ordinary February exactly as it blocks a seasonal July:
some columns move every night. Here each column's (and the prediction's) score is compared with the
scores of the same model's previous drift checks, and only what is far outside its usual night-to-night
drift is flagged. Plain Python (no Evidently import): configs are checked with it when parsed.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np


class DriftBaselineError(ValueError):
    """A baseline setting is malformed; the message names it."""


@dataclass(frozen=True)
class DriftBaseline:
    """Judge tonight's drift scores against their own history instead of one fixed threshold.

    Each column's (and the prediction's) score is compared with its scores on the previous ``nights``
    checks of the same model: unusual when above ``mean + k * std`` of that history (and above
    ``min_score``, so a column that never moves is not flagged for a tiny wobble). With fewer than
    ``min_nights`` past scores a column is judged by the fixed threshold, and the report says so."""

    nights: int = 14
    k: float = 3.0
    min_nights: int = 5
    min_score: float = 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> DriftBaseline | None:
        if not data:
            return None
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise DriftBaselineError(f"baseline: unknown key(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        b = cls(**data)
        if not isinstance(b.nights, int) or b.nights < 2 or not isinstance(b.min_nights, int) or not (
                2 <= b.min_nights <= b.nights):
            raise DriftBaselineError(f"baseline: need integers 2 <= min_nights <= nights, got {b.min_nights}, {b.nights}")
        if not isinstance(b.k, int | float) or isinstance(b.k, bool) or not b.k > 0:
            raise DriftBaselineError(f"baseline.k: must be a positive number, got {b.k!r}")
        return b


def judge_against_baseline(scores: dict[str, float | None], history: dict[str, list[float]],
                           baseline: DriftBaseline, fixed: dict[str, bool]) -> dict[str, dict[str, Any]]:
    """``{name: {"score", "drifted", "basis", "usual_mean", "usual_std", "limit", "nights"}}``: ``drifted`` by
    the column's own history when it has ``min_nights`` past scores (basis ``baseline``), else the fixed
    threshold's verdict ``fixed[name]`` (basis ``fixed_threshold``)."""
    out: dict[str, dict[str, Any]] = {}
    for name, score in scores.items():
        past = [v for v in history.get(name, []) if v is not None and math.isfinite(v)][-baseline.nights:]
        if score is None or len(past) < baseline.min_nights:
            out[name] = {"score": score, "drifted": bool(fixed.get(name)), "basis": "fixed_threshold",
                         "nights": len(past)}
            continue
        mean, std = float(np.mean(past)), float(np.std(past))
        limit = max(mean + baseline.k * std, baseline.min_score)
        out[name] = {"score": score, "drifted": bool(score > limit), "basis": "baseline", "usual_mean": mean,
                     "usual_std": std, "limit": limit, "nights": len(past)}
    return out


def rebase_report(report: Any, verdicts: dict[str, dict[str, Any]]) -> Any:
    """The report with each column's ``drifted`` (and the drifted set, share, dataset drift) from ``verdicts``."""
    new = copy.deepcopy(report)
    for name, verdict in verdicts.items():
        if name in new.columns:
            new.columns[name]["drifted"] = verdict["drifted"]
            new.columns[name]["baseline"] = {k: v for k, v in verdict.items() if k not in ("score", "drifted")}
    new.drifted_columns = [c for c, v in new.columns.items() if v.get("drifted")]
    new.share_drifted = len(new.drifted_columns) / len(new.columns) if new.columns else 0.0
    new.dataset_drift = new.share_drifted >= new.drift_share
    new.extra = {**new.extra, "baseline": True}
    return new
