"""The release decision at each model's operating point: decision metrics, the flip rate, paired
bootstrap intervals and slices (binary tasks; plain numpy).

Champion and challenger are each scored on the same holdout and each decides with *its own* rule (the
operating point saved with it). What users feel is the decision, so next to the ranking metrics the gate
bounds FPR, precision, recall, positive rate and the **decision flip rate** (the share of holdout rows whose
decision changes), with paired bootstrap intervals: the policy judges a bound on the point estimate or on
the interval's worse end. Declared slice columns get the same metrics per slice (a minimum slice size
below which a slice is reported, not judged), per-slice change bounds, a worst-slice floor and a
cross-slice gap cap.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gd_provider.core.gates.uncertainty import Interval, PairedBootstrap, paired_bootstrap, task_bootstrap

DECISION_DIRECTIONS = {"fpr": False, "precision": True, "recall": True, "f1": True, "positive_rate": False,
                       "flip_rate": False}
JUDGES = ("point", "worst_end")


class ReleasePolicyError(ValueError):
    """An interval or slice policy is malformed; the message names the field."""


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class IntervalPolicy:
    """``confidence`` intervals from ``resamples`` paired bootstrap draws; ``judge``: ``point`` (bounds on
    the estimates) or ``worst_end`` (bounds on the interval's worse end: a noisy holdout cannot pass a
    bound by luck)."""

    confidence: float = 0.95
    resamples: int = 1000
    judge: str = "point"
    seed: int = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> IntervalPolicy | None:
        if not data:
            return None
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ReleasePolicyError(f"interval: unknown key(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        policy = cls(**data)
        if not _number(policy.confidence) or not 0.5 <= policy.confidence < 1:
            raise ReleasePolicyError(f"interval.confidence: must be in [0.5, 1), got {policy.confidence!r}")
        if not isinstance(policy.resamples, int) or isinstance(policy.resamples, bool) or policy.resamples < 100:
            raise ReleasePolicyError(f"interval.resamples: must be an integer >= 100, got {policy.resamples!r}")
        if policy.judge not in JUDGES:
            raise ReleasePolicyError(f"interval.judge: {policy.judge!r}; choose one of {list(JUDGES)}")
        return policy


@dataclass(frozen=True)
class SlicePolicy:
    """Per-slice checks over the holdout grouped by ``columns`` (their value combinations)."""

    columns: tuple[str, ...] = ()
    min_rows: int = 200
    max_abs_regression: dict[str, float] = field(default_factory=dict)
    worst_slice_floor: dict[str, float] = field(default_factory=dict)
    max_gap: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None,
                  directions: Mapping[str, bool] = DECISION_DIRECTIONS) -> SlicePolicy | None:
        """``directions``: the metrics a slice bound may name (binary: the decision metrics; another task: its
        gate metrics)."""
        if not data:
            return None
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ReleasePolicyError(f"slices: unknown key(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        columns = data.get("columns")
        if not isinstance(columns, list | tuple) or not columns or not all(isinstance(c, str) and c for c in columns):
            raise ReleasePolicyError(f"slices.columns: give the slice columns as a non-empty list, got {columns!r}")
        policy = cls(**{**data, "columns": tuple(columns)})
        if not isinstance(policy.min_rows, int) or isinstance(policy.min_rows, bool) or policy.min_rows < 1:
            raise ReleasePolicyError(f"slices.min_rows: must be a positive integer, got {policy.min_rows!r}")
        for where in ("max_abs_regression", "worst_slice_floor", "max_gap"):
            bounds = getattr(policy, where)
            if not isinstance(bounds, Mapping):
                raise ReleasePolicyError(f"slices.{where}: expected {{metric: number}}, got {bounds!r}")
            for metric, bound in bounds.items():
                if metric not in directions or (metric == "flip_rate" and where == "max_abs_regression"):
                    raise ReleasePolicyError(f"slices.{where}: metric {metric!r} is not a slice metric; slice "
                                             f"metrics are {sorted(directions)}")
                if not _number(bound) or bound < 0 and where != "worst_slice_floor":
                    raise ReleasePolicyError(f"slices.{where}.{metric}: must be a non-negative number, got {bound!r}")
        if not (policy.max_abs_regression or policy.worst_slice_floor or policy.max_gap):
            raise ReleasePolicyError("slices: give at least one of max_abs_regression, worst_slice_floor, max_gap")
        return policy


def slice_ids(frame: Any, columns: tuple[str, ...]) -> tuple[np.ndarray, list[str]]:
    """An integer slice id per row and the slices' names (``channel=online`` / ``a=x,b=y``)."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ReleasePolicyError(f"slices.columns: {missing} not in the holdout (columns: {list(frame.columns)})")
    import pandas as pd

    keys = frame[list(columns)].astype("string").fillna("<null>")
    combined = keys.iloc[:, 0] if len(columns) == 1 else keys.agg(lambda r: "\x1f".join(r), axis=1)
    codes, uniques = pd.factorize(combined, sort=True)
    names = [",".join(f"{c}={v}" for c, v in zip(columns, str(u).split("\x1f"), strict=True)) for u in uniques]
    return codes.astype(np.int64), names


def worse_end(interval: Interval | None, higher_is_better: bool, point: float) -> float:
    """The end of an interval a bound is judged on under ``worst_end`` (the point when there is none)."""
    if interval is None or not math.isfinite(interval.low) or not math.isfinite(interval.high):
        return point
    return interval.low if higher_is_better else interval.high


def compare(y: np.ndarray, champion_decisions: np.ndarray | None, challenger_decisions: np.ndarray, *,
            interval: IntervalPolicy | None, slices: tuple[np.ndarray, list[str]] | None = None,
            champion_scores: np.ndarray | None = None, challenger_scores: np.ndarray | None = None,
            ranking: bool = True) -> PairedBootstrap:
    """The paired bootstrap of a comparison (no champion: the challenger against itself, changes zero);
    ``ranking``: also ROC/PR AUC intervals (m-out-of-n; the costly part)."""
    dc = challenger_decisions if champion_decisions is None else champion_decisions
    sc = challenger_scores if champion_scores is None else champion_scores
    ids, names = slices if slices is not None else (None, None)
    policy = interval or IntervalPolicy(resamples=200)
    return paired_bootstrap(y, dc, challenger_decisions, slices=ids, slice_names=names,
                            champion_scores=sc if interval is not None and ranking else None,
                            challenger_scores=challenger_scores if interval is not None and ranking else None,
                            resamples=policy.resamples, confidence=policy.confidence, seed=policy.seed)


def judge_slices(boot: PairedBootstrap, policy: SlicePolicy, *, judge: str, has_champion: bool,
                 champion_version: str | None = None,
                 directions: Mapping[str, bool] = DECISION_DIRECTIONS) -> tuple[bool, list[str], dict[str, Any]]:
    """``(ok, reasons, report)``: the slice checks; ``report`` lists the judged, unjudged (too small) and
    failed slices with their metrics. ``directions``: ``{metric: higher_is_better}`` of the slice metrics."""
    judged = [s for s in boot.slices if boot.slice_rows[s] >= policy.min_rows]
    small = {s: boot.slice_rows[s] for s in boot.slices if s not in judged}
    reasons: list[str] = []
    failed: dict[str, list[str]] = {}
    if small:
        reasons.append(f"slices under min_rows={policy.min_rows}, reported not judged: "
                       + ", ".join(f"{s} ({n} rows)" for s, n in small.items()))
    use_worst = judge == "worst_end"

    def value(name: str, who: str, metric: str) -> float:
        iv = boot.slices[name][who][metric]
        higher = directions[metric]
        return worse_end(iv, higher, iv.value) if use_worst else iv.value

    for metric, tol in policy.max_abs_regression.items():
        if not has_champion:
            continue
        higher = directions[metric]
        for s in judged:
            change = boot.slices[s]["change"][metric]
            delta = (worse_end(change, higher, change.value) if use_worst else change.value)
            worse = -delta if higher else delta
            if math.isfinite(worse) and worse > tol + 1e-12:
                failed.setdefault(s, []).append(
                    f"{metric} {boot.slices[s]['challenger'][metric].value:.4f} vs champion v{champion_version} "
                    f"{boot.slices[s]['champion'][metric].value:.4f} (worsening {worse:.4f} > {tol:.4f})")
    for metric, floor in policy.worst_slice_floor.items():
        higher = directions[metric]
        values = {s: value(s, "challenger", metric) for s in judged}
        values = {s: v for s, v in values.items() if math.isfinite(v)}
        if values:
            worst = min(values, key=values.__getitem__) if higher else max(values, key=values.__getitem__)
            if (values[worst] < floor) if higher else (values[worst] > floor):
                failed.setdefault(worst, []).append(
                    f"{metric} {values[worst]:.4f} {'below' if higher else 'above'} the worst-slice floor {floor:.4f}")
    for metric, cap in policy.max_gap.items():
        values = {s: boot.slices[s]["challenger"][metric].value for s in judged}
        values = {s: v for s, v in values.items() if math.isfinite(v)}
        if len(values) >= 2:
            lo, hi = min(values, key=values.__getitem__), max(values, key=values.__getitem__)
            gap = values[hi] - values[lo]
            if gap > cap + 1e-12:
                for s in (lo, hi):
                    failed.setdefault(s, []).append(
                        f"{metric} gap {gap:.4f} between {hi} ({values[hi]:.4f}) and {lo} ({values[lo]:.4f}) "
                        f"above {cap:.4f}")
    for s, why in failed.items():
        reasons.append(f"slice {s} ({boot.slice_rows[s]} rows): " + "; ".join(why) + ": FAIL")
    if judged and not failed:
        reasons.append(f"{len(judged)} slice(s) of {list(policy.columns)} within bounds: pass")
    report = {"columns": list(policy.columns), "judged": judged, "unjudged": small, "failed": sorted(failed),
              "metrics": {s: {who: {m: iv.value for m, iv in boot.slices[s][who].items()}
                              for who in ("champion", "challenger")} for s in boot.slices},
              "rows": boot.slice_rows}
    return not failed, reasons, report


def size_problems(task: Any, y: np.ndarray, *, min_rows: int, min_class_rows: int) -> list[str]:
    """Why a holdout is too small for the gate to decide (empty list: it is big enough)."""
    problems = []
    if len(y) < min_rows:
        problems.append(f"the holdout has {len(y)} rows, fewer than min_holdout_rows={min_rows}")
    if min_class_rows:
        classes = getattr(task, "classes", None) or ([0, 1] if task.name == "binary" else None)
        if classes is not None:
            counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=len(classes))
            few = {str(c): int(n) for c, n in zip(classes, counts, strict=False) if n < min_class_rows}
            if few:
                problems.append(f"label classes under min_class_rows={min_class_rows} in the holdout: {few}")
    return problems


def decide_release(
    task: Any,
    policy: Any,
    y: np.ndarray,
    challenger_scores: np.ndarray,
    champion_scores: np.ndarray | None,
    *,
    challenger_threshold: float | None = None,
    champion_threshold: float | None = None,
    champion_version: str | None = None,
    holdout: Any = None,
) -> Any:
    """The gate's decision (:class:`gd_provider.core.gate.GateDecision`) for one holdout.

    Each model is scored by the task with its own decision rule (``*_threshold``: its operating point; None:
    the policy's ``decision_threshold``). For a binary task the decision metrics, the flip rate, the
    bootstrap intervals (``policy.interval``) and the slices (``policy.slices``, columns of ``holdout``)
    are judged too. A holdout under ``min_holdout_rows`` / ``min_class_rows`` is not decided on: the
    challenger is not blessed and the reasons say why."""
    from gd_provider.core.gate import decide
    from gd_provider.core.tasks import BinaryTask

    binary = isinstance(task, BinaryTask)
    if binary:
        default = policy.decision_threshold
        th_h = default if challenger_threshold is None else float(challenger_threshold)
        th_c = default if champion_threshold is None else float(champion_threshold)
    else:  # another task's rule (per-class thresholds, a tolerance) or None: its default
        th_h, th_c = challenger_threshold, task.comparison_rule(champion_threshold, challenger_threshold)
    challenger = task.gate_metrics(y, challenger_scores, th_h)
    champion = None if champion_scores is None else task.gate_metrics(y, champion_scores, th_c)
    interval = IntervalPolicy.from_dict(policy.interval)
    directions = DECISION_DIRECTIONS if binary else dict(task.metrics)
    slicing = SlicePolicy.from_dict(policy.slices, directions=directions)
    boot = None
    if not binary:
        if champion_scores is not None and "flip_rate" in task.metrics:
            flips = task.flip_rate(champion_scores, challenger_scores, th_c, th_h)
            if math.isfinite(flips):
                challenger["flip_rate"] = flips
        if interval is not None or slicing is not None:
            ids, names = slice_ids(holdout, slicing.columns) if slicing is not None else (None, None)
            policy_iv = interval or IntervalPolicy(resamples=200)
            boot = task_bootstrap(task, y, champion_scores, challenger_scores, champion_rule=th_c,
                                  challenger_rule=th_h, slices=ids, slice_names=names,
                                  resamples=policy_iv.resamples, confidence=policy_iv.confidence, seed=policy_iv.seed)
    if binary:
        dh = task.decisions(challenger_scores, th_h)
        dc = None if champion_scores is None else task.decisions(champion_scores, th_c)
        if dc is not None:
            challenger["flip_rate"] = float(np.mean(dc != dh))
        if interval is not None or slicing is not None:
            grouped = slice_ids(holdout, slicing.columns) if slicing is not None else None
            named = {*policy.value_thresholds, *policy.max_abs_regression, *policy.max_rel_regression}
            boot = compare(y, dc, dh, interval=interval, slices=grouped, champion_scores=champion_scores,
                           challenger_scores=challenger_scores, ranking=bool(named & {"roc_auc", "pr_auc"}))
    overall = boot.overall if boot is not None and interval is not None else None
    if overall is not None and champion_scores is None:
        overall = {"challenger": overall["challenger"]}  # no champion: no changes to judge
    decision = decide(challenger, champion, policy, champion_version=champion_version, task=task, intervals=overall)
    problems = size_problems(task, y, min_rows=policy.min_holdout_rows, min_class_rows=policy.min_class_rows)
    if problems:
        decision.blessed = False
        decision.reasons = [f"the gate refuses to decide: {p}" for p in problems] + decision.reasons
    if slicing is not None and boot is not None:
        ok, reasons, report = judge_slices(boot, slicing, judge=interval.judge if interval else "point",
                                           has_champion=champion_scores is not None, champion_version=champion_version,
                                           directions=directions)
        decision.blessed = decision.blessed and ok
        decision.reasons += reasons
        decision.slices = report
    if binary:
        decision.operating_points = {"challenger": {"threshold": th_h},
                                     "champion": None if champion_scores is None else {"threshold": th_c}}
    elif th_h is not None or th_c is not None:
        decision.operating_points = {"challenger": _rule_summary(th_h),
                                     "champion": None if champion_scores is None else _rule_summary(th_c)}
    if overall is not None and boot is not None and interval is not None:
        decision.intervals = {"confidence": boot.confidence, "resamples": boot.resamples, "judge": interval.judge,
                              **{group: {m: iv.to_dict() for m, iv in values.items()} for group, values in overall.items()}}
    decision.holdout_rows = int(len(y))
    decision.intervals, decision.slices = strict_json(decision.intervals), strict_json(decision.slices)
    return decision


def strict_json(value: Any) -> Any:
    """Non-finite floats as None (XCom and MLflow want strict JSON), numpy scalars as Python ones."""
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _rule_summary(rule: Any) -> Any:
    """A decision rule without its validation numbers, for the gate's result (None: the task's default)."""
    if not isinstance(rule, Mapping):
        return rule
    return {k: v for k, v in rule.items() if k not in ("validation", "objective")} or None

