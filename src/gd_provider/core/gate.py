"""Champion-vs-challenger gate: both scored on the same holdout, TFX-style thresholds.

A threshold is either a *value* bound (``roc_auc >= 0.75``) or a *change* bound against the champion
(``pr_auc`` may drop by at most 0.01 absolute / 5 % relative). The gate refuses to bless when no
threshold is configured, and the first run (no champion) is decided by an explicit bootstrap policy.

The metrics and their directions are the task's (:attr:`gd_provider.core.tasks.Task.metrics`: binary
``roc_auc``/``pr_auc``/..., multiclass ``accuracy``/``macro_f1``/``recall_<class>``/..., regression
``rmse``/``mae``/``r2``/``abs_error_pNN``); a policy naming a metric its task does not have is refused
with the task and the field named. Without a task everything is the binary task's, as before tasks existed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from gd_provider.core.tasks import BinaryTask, Task, classification_metrics, get_task

__all__ = [
    "BOOTSTRAP_POLICIES", "HIGHER_IS_BETTER", "METRIC_FIELDS", "SMOKE_BOUNDS", "SMOKE_DEFAULTS", "SMOKE_KEYS", "GateConfigError",
    "GateDecision", "GatePolicy", "HoldoutMismatchError", "classification_metrics", "decide", "directions_of",
    "smoke_option_problems", "task_or_binary", "verify_holdout",
]

# the binary task's metric directions (the gate's before tasks existed; a policy on another task uses its own)
HIGHER_IS_BETTER: dict[str, bool] = dict(BinaryTask.metrics)
BOOTSTRAP_POLICIES = ("bless_if_value_thresholds_pass", "reject")
METRIC_FIELDS = ("value_thresholds", "max_abs_regression", "max_rel_regression")
DEFAULT_DECISION_THRESHOLD = 0.5

# The smoke test's task-dependent options (each task reads some: ``Task.smoke_options``) and their defaults;
# a key at its default is ignored by a task that does not read it, any other value there is an error.
SMOKE_DEFAULTS: dict[str, Any] = {
    "positive_rate_bounds": (0.0, 0.5),  # binary: the positive-prediction rate on the canary
    "max_positive_rate_change": 0.05,  # binary: vs the previous champion on the same canary (absolute)
    "max_class_share_change": 0.1,  # multiclass: any class's predicted share vs the previous champion
    "prediction_bounds": None,  # regression: every prediction within [lo, hi]
    "max_mean_shift_std": 1.0,  # regression: mean prediction vs the previous champion's, in its std
}
SMOKE_KEYS = tuple(SMOKE_DEFAULTS)
SMOKE_BOUNDS = ("positive_rate_bounds", "prediction_bounds")  # the others compare with the previous champion


class GateConfigError(ValueError):
    """The gate policy cannot decide anything as configured."""


class HoldoutMismatchError(ValueError):
    """The gate's holdout is not provably the one training held out: nothing can be decided on it."""


def task_or_binary(task: Task | None) -> Task:
    """``task``, or the binary task (what every check meant before tasks existed)."""
    return task if task is not None else get_task("binary")


def directions_of(task: Task | Mapping[str, bool] | None) -> dict[str, bool]:
    """``{metric: higher_is_better}`` of a task (or a mapping of directions; None: binary)."""
    if isinstance(task, Mapping):
        return dict(task)
    return dict(task_or_binary(task).metrics)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def smoke_option_problems(task: Task | None, options: Mapping[str, Any]) -> list[str]:
    """``["<key>: ..."]`` for each task-dependent smoke-test option in ``options`` that ``task`` does not read
    and that is not at its default (``positive_rate_bounds`` on a regression model)."""
    task = task_or_binary(task)
    problems = []
    for key in SMOKE_KEYS:
        if key in options and key not in task.smoke_options and not _same(options[key], SMOKE_DEFAULTS[key]):
            reads = list(task.smoke_options) or "none of them"
            problems.append(f"{key}: the {task.name} task does not read it (its smoke-test options: {reads})")
    return problems
def verify_holdout(recorded: dict[str, Any] | None, *, rows: int, sha256: str) -> None:
    """Require the holdout the gate rebuilt (``rows``, ``sha256`` =
    :func:`gd_provider.core.training.preprocess.frame_digest`, as training computes it) to be the holdout
    training recorded (its manifest's ``holdout``: ``rows``, ``sha256``). A challenger scored on rows it
    trained on, or champion and challenger on different rows, would make the comparison meaningless."""
    if not recorded or not recorded.get("sha256"):
        raise HoldoutMismatchError(
            "the training manifest records no holdout digest (training['holdout']['sha256']): cannot prove the "
            "gate scores the rows training held out"
        )
    problems = []
    if str(recorded["sha256"]) != sha256:
        problems.append(f"sha256 {sha256} vs training's {recorded['sha256']}")
    if recorded.get("rows") is None or int(recorded["rows"]) != int(rows):
        problems.append(f"{rows} rows vs training's {recorded.get('rows')}")
    if problems:
        basis = f" (digest over {recorded['sha256_basis']})" if recorded.get("sha256_basis") else ""
        raise HoldoutMismatchError(
            "the holdout rebuilt from the dataset is not the one training held out" + basis + ": "
            + "; ".join(problems) + " (another dataset or split settings than training used?)"
        )


@dataclass(frozen=True)
class GatePolicy:
    """Thresholds on a task's gate metrics (:attr:`gd_provider.core.tasks.Task.metrics`; binary when no task
    is given). ``decision_threshold`` is the binary task's (a score at or above it is a positive)."""

    decision_threshold: float = DEFAULT_DECISION_THRESHOLD
    # metric -> minimum (or maximum, for lower-is-better metrics) acceptable value
    value_thresholds: dict[str, float] = field(default_factory=dict)
    # metric -> largest allowed absolute worsening vs the champion (0 = must not get worse)
    max_abs_regression: dict[str, float] = field(default_factory=dict)
    # metric -> largest allowed relative worsening vs the champion (0.05 = 5 %)
    max_rel_regression: dict[str, float] = field(default_factory=dict)
    bootstrap: str = "bless_if_value_thresholds_pass"
    # below these the gate refuses to decide (the challenger is not blessed, saying why): holdout rows, and
    # rows of the rarest label class (binary: positives and negatives; multiclass: each declared class)
    min_holdout_rows: int = 0
    min_class_rows: int = 0
    # paired bootstrap intervals and how bounds are judged on them (core.gates.release.IntervalPolicy)
    interval: dict[str, Any] = field(default_factory=dict)
    # per-slice checks (core.gates.release.SlicePolicy)
    slices: dict[str, Any] = field(default_factory=dict)

    def validate(self, task: Task | Mapping[str, bool] | None = None) -> None:
        """Raise :class:`GateConfigError` naming the field (and the task, for a metric it does not have).

        ``task``: a task, or its ``{metric: higher_is_better}`` (then named "given"); None: binary."""
        if isinstance(task, Mapping):
            metrics, task_name, binary = dict(task), "given", True
        else:
            plugin = task_or_binary(task)
            metrics, task_name, binary = dict(plugin.metrics), plugin.name, isinstance(plugin, BinaryTask)
        if not (self.value_thresholds or self.max_abs_regression or self.max_rel_regression):
            raise GateConfigError("gate policy has no threshold configured: refusing to bless anything")
        for where in METRIC_FIELDS:
            bounds = getattr(self, where)
            if not isinstance(bounds, Mapping):
                raise GateConfigError(f"{where}: expected a mapping {{metric: number}}, got {bounds!r}")
            for name, bound in bounds.items():
                if name not in metrics:
                    raise GateConfigError(f"{where}: metric {name!r} is not a {task_name} metric; {task_name} "
                                          f"metrics are {sorted(metrics)}")
                if isinstance(bound, bool) or not isinstance(bound, int | float) or not math.isfinite(bound):
                    raise GateConfigError(f"{where}: {name} must be a finite number, got {bound!r}")
        if self.bootstrap not in BOOTSTRAP_POLICIES:
            raise GateConfigError(f"gate policy bootstrap={self.bootstrap!r}; valid: {list(BOOTSTRAP_POLICIES)}")
        threshold = self.decision_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise GateConfigError(f"decision_threshold: must be a number in (0, 1), got {threshold!r}")
        if not binary and threshold != DEFAULT_DECISION_THRESHOLD:
            raise GateConfigError(f"decision_threshold: applies to the binary task only, not to the {task_name} task")
        if not 0.0 < threshold < 1.0:
            raise GateConfigError(f"gate policy decision_threshold={threshold} must be in (0, 1)")
        for name in ("min_holdout_rows", "min_class_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise GateConfigError(f"{name}: must be a non-negative integer, got {value!r}")
        from gd_provider.core.gates.release import (
            DECISION_DIRECTIONS,
            IntervalPolicy,
            ReleasePolicyError,
            SlicePolicy,
        )

        # slice bounds: the binary task's decision metrics, another task's gate metrics (and flip rate)
        slice_metrics = DECISION_DIRECTIONS if binary else metrics
        try:
            IntervalPolicy.from_dict(self.interval)
            SlicePolicy.from_dict(self.slices, directions=slice_metrics)
        except (ReleasePolicyError, TypeError) as exc:
            raise GateConfigError(str(exc)) from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], task: Task | Mapping[str, bool] | None = None) -> GatePolicy:
        """A validated policy (against ``task``; None: binary)."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise GateConfigError(f"gate policy has unknown fields {sorted(unknown)}")
        policy = cls(**data)
        policy.validate(task)
        return policy


@dataclass
class GateDecision:
    blessed: bool
    reasons: list[str]
    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    champion_version: str | None
    holdout_rows: int = 0
    holdout_sha256: str | None = None
    # each model's decision rule on the holdout ({"champion": {...}, "challenger": {...}}), the bootstrap
    # intervals ({"confidence", "resamples", "overall": ...}) and the slice report, when decided on them
    operating_points: dict[str, Any] | None = None
    intervals: dict[str, Any] | None = None
    slices: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        verdict = "BLESSED" if self.blessed else "REJECTED"
        return f"{verdict}: " + "; ".join(self.reasons)


def _fmt(x: float) -> str:
    return f"{x:.4f}"


def decide(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    policy: GatePolicy,
    *,
    champion_version: str | None = None,
    task: Task | Mapping[str, bool] | None = None,
    intervals: Mapping[str, Mapping[str, Any]] | None = None,
) -> GateDecision:
    """Bless the challenger only when every configured threshold passes. Each check adds a reason.

    ``task``: the task whose metrics the policy names (or its ``{metric: higher_is_better}``); None: binary.
    ``intervals``: paired bootstrap intervals (``{"challenger" | "champion" | "change": {metric: Interval}}``,
    :func:`gd_provider.core.gates.uncertainty.paired_bootstrap`); with ``interval.judge: worst_end`` each
    bound is judged on the interval's worse end. ``flip_rate`` needs a champion (skipped without one)."""
    from gd_provider.core.gates.release import worse_end

    policy.validate(task)
    directions = directions_of(task)
    judge_worst = bool(intervals) and (policy.interval or {}).get("judge") == "worst_end"
    pair_only = {"flip_rate"}
    for name in {*policy.value_thresholds, *policy.max_abs_regression, *policy.max_rel_regression}:
        for who, metrics in (("challenger", challenger), ("champion", champion)):
            if metrics is not None and name not in metrics and not (
                    name in pair_only and (champion is None or who == "champion")):
                raise GateConfigError(f"the {who}'s metrics have no {name!r} (they have {sorted(metrics)})")

    def interval(group: str, name: str) -> Any:
        return (intervals or {}).get(group, {}).get(name)

    def shown(group: str, name: str) -> str:
        iv = interval(group, name)
        if iv is None or not math.isfinite(iv.low):
            return ""
        return f" [{iv.low:+.4f}, {iv.high:+.4f}]" if group == "change" else f" [{iv.low:.4f}, {iv.high:.4f}]"

    basis = " (judged on the worse end of each interval)" if judge_worst else ""
    reasons: list[str] = []
    ok = True
    for name, bound in policy.value_thresholds.items():
        if name in pair_only and champion is None:
            reasons.append(f"{name}: no champion to compare decisions with: not judged")
            continue
        value = challenger[name]
        judged = worse_end(interval("challenger", name), directions[name], value) if judge_worst else value
        passed = judged >= bound if directions[name] else judged <= bound
        ok &= passed
        op = ">=" if directions[name] else "<="
        reasons.append(f"{name} {_fmt(value)}{shown('challenger', name)} {op} {_fmt(bound)}{basis}: "
                       f"{'pass' if passed else 'FAIL'}")
    if champion is None:
        if policy.bootstrap == "reject":
            return GateDecision(False, [*reasons, "no champion and bootstrap policy is 'reject'"],
                                challenger, None, None)
        if not policy.value_thresholds:
            return GateDecision(False, ["no champion to compare with and no value threshold configured"],
                                challenger, None, None)
        reasons.append("no champion yet: bootstrap on value thresholds")
        return GateDecision(ok, reasons, challenger, None, None)
    def worsening(name: str) -> float:
        change = challenger[name] - champion[name]
        if judge_worst:
            change = worse_end(interval("change", name), directions[name], change)
        return -change if directions[name] else change

    for name, tol in policy.max_abs_regression.items():
        worse = worsening(name)
        passed = worse <= tol + 1e-12
        ok &= passed
        reasons.append(
            f"{name} {_fmt(challenger[name])}{shown('challenger', name)} vs champion v{champion_version} "
            f"{_fmt(champion[name])}{shown('champion', name)} (change {challenger[name] - champion[name]:+.4f}"
            f"{shown('change', name)}, allowed worsening {_fmt(tol)}{basis}): {'pass' if passed else 'FAIL'}"
        )
    for name, tol in policy.max_rel_regression.items():
        base = champion[name]
        worse = worsening(name)
        rel = worse / abs(base) if base else (math.inf if worse > 0 else 0.0)
        passed = rel <= tol + 1e-12
        ok &= passed
        reasons.append(
            f"{name} {_fmt(challenger[name])}{shown('challenger', name)} vs champion v{champion_version} "
            f"{_fmt(base)}{shown('champion', name)}: relative worsening {rel:+.2%} (allowed {tol:.2%}{basis}): "
            f"{'pass' if passed else 'FAIL'}"
        )
    return GateDecision(ok, reasons, challenger, champion, champion_version)

