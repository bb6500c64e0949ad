"""Champion-vs-challenger gate: both scored on the same holdout, TFX-style thresholds.

A threshold is either a *value* bound (``roc_auc >= 0.75``) or a *change* bound against the champion
(``pr_auc`` may drop by at most 0.01 absolute / 5 % relative). The gate refuses to bless when no
threshold is configured, and the first run (no champion) is decided by an explicit bootstrap policy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

HIGHER_IS_BETTER = {"roc_auc": True, "pr_auc": True, "precision": True, "recall": True, "f1": True,
                    "fpr": False, "log_loss": False, "ece": False}
BOOTSTRAP_POLICIES = ("bless_if_value_thresholds_pass", "reject")


class GateConfigError(ValueError):
    """The gate policy cannot decide anything as configured."""


class HoldoutMismatchError(ValueError):
    """The gate's holdout is not provably the one training held out: nothing can be decided on it."""


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
    decision_threshold: float = 0.5
    # metric -> minimum (or maximum, for lower-is-better metrics) acceptable value
    value_thresholds: dict[str, float] = field(default_factory=dict)
    # metric -> largest allowed absolute worsening vs the champion (0 = must not get worse)
    max_abs_regression: dict[str, float] = field(default_factory=dict)
    # metric -> largest allowed relative worsening vs the champion (0.05 = 5 %)
    max_rel_regression: dict[str, float] = field(default_factory=dict)
    bootstrap: str = "bless_if_value_thresholds_pass"

    def validate(self) -> None:
        if not (self.value_thresholds or self.max_abs_regression or self.max_rel_regression):
            raise GateConfigError("gate policy has no threshold configured: refusing to bless anything")
        for name in (*self.value_thresholds, *self.max_abs_regression, *self.max_rel_regression):
            if name not in HIGHER_IS_BETTER:
                raise GateConfigError(f"gate policy names unknown metric {name!r}; known: {sorted(HIGHER_IS_BETTER)}")
        if self.bootstrap not in BOOTSTRAP_POLICIES:
            raise GateConfigError(f"gate policy bootstrap={self.bootstrap!r}; valid: {list(BOOTSTRAP_POLICIES)}")
        if not 0.0 < self.decision_threshold < 1.0:
            raise GateConfigError(f"gate policy decision_threshold={self.decision_threshold} must be in (0, 1)")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GatePolicy:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise GateConfigError(f"gate policy has unknown fields {sorted(unknown)}")
        policy = cls(**data)
        policy.validate()
        return policy


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
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


@dataclass
class GateDecision:
    blessed: bool
    reasons: list[str]
    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    champion_version: str | None
    holdout_rows: int = 0
    holdout_sha256: str | None = None

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
) -> GateDecision:
    """Bless the challenger only when every configured threshold passes. Each check adds a reason."""
    policy.validate()
    reasons: list[str] = []
    ok = True
    for name, bound in policy.value_thresholds.items():
        value = challenger[name]
        passed = value >= bound if HIGHER_IS_BETTER[name] else value <= bound
        ok &= passed
        op = ">=" if HIGHER_IS_BETTER[name] else "<="
        reasons.append(f"{name} {_fmt(value)} {op} {_fmt(bound)}: {'pass' if passed else 'FAIL'}")
    if champion is None:
        if policy.bootstrap == "reject":
            return GateDecision(False, [*reasons, "no champion and bootstrap policy is 'reject'"],
                                challenger, None, None)
        if not policy.value_thresholds:
            return GateDecision(False, ["no champion to compare with and no value threshold configured"],
                                challenger, None, None)
        reasons.append("no champion yet: bootstrap on value thresholds")
        return GateDecision(ok, reasons, challenger, None, None)
    for name, tol in policy.max_abs_regression.items():
        worse = (champion[name] - challenger[name]) if HIGHER_IS_BETTER[name] else (challenger[name] - champion[name])
        passed = worse <= tol + 1e-12
        ok &= passed
        reasons.append(
            f"{name} {_fmt(challenger[name])} vs champion v{champion_version} {_fmt(champion[name])} "
            f"(change {_fmt(-worse)}, allowed worsening {_fmt(tol)}): {'pass' if passed else 'FAIL'}"
        )
    for name, tol in policy.max_rel_regression.items():
        base = champion[name]
        worse = (base - challenger[name]) if HIGHER_IS_BETTER[name] else (challenger[name] - base)
        rel = worse / abs(base) if base else (math.inf if worse > 0 else 0.0)
        passed = rel <= tol + 1e-12
        ok &= passed
        reasons.append(
            f"{name} relative change {-rel:+.2%} vs champion v{champion_version} "
            f"(allowed worsening {tol:.2%}): {'pass' if passed else 'FAIL'}"
        )
    return GateDecision(ok, reasons, challenger, champion, champion_version)
