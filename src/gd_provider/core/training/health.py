"""The health summary of a training run, and the health gate's decision on it (plain Python).

``health_summary`` condenses the per-step telemetry, the guard trip and the sensitivity check into a flat,
JSON-safe dict of scalars (it becomes MLflow tags ``gd.health.<key>`` and travels over XCom).
``assess_health(health, thresholds)`` returns ``(ok, reasons)``; every check adds one ``PASS``/``FAIL`` line.

The clipped-step share is calibrated to the batch size: a minibatch gradient's norm grows with its noise,
~ 1/sqrt(rows per optimizer step), so at a small batch most steps exceed ``grad_clip_norm`` although
nothing is wrong (the demo at ``batch_size: 64``: 53 % of its steps). ``clipped_share`` - what
``max_clipped_share`` bounds - counts the steps whose pre-clip norm exceeds
``grad_clip_norm x max(1, sqrt(CLIP_REFERENCE_ROWS / rows))``, ``rows`` = ``batch_size x num_workers``
(one row for ``batch_mode: sgd``): at ``CLIP_REFERENCE_ROWS`` (512, the shipped batch size the 0.5 bound
was set for) rows and more, exactly the clipped steps; at 64 rows the steps above 2.83 x the clip norm.
``clipped_share_raw`` is the plain share of clipped steps, for the record.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

# The rows per optimizer step at which max_clipped_share means "share of clipped steps" (module docstring).
CLIP_REFERENCE_ROWS = 512


@dataclass(frozen=True)
class HealthThresholds:
    """What the health gate tolerates. ``None`` switches a check off."""

    allow_diverged: bool = False
    max_nonfinite_steps: int | None = 0
    max_clipped_share: float | None = 0.5
    # True: the sensitivity check must have run and passed (a run without it FAILs: a required check that did
    # not run is never a pass); None (default): a failed check fails the gate, one switched off is noted
    require_sensitivity_pass: bool | None = None
    max_restarts: int | None = None

    @classmethod
    def from_value(cls, value: HealthThresholds | Mapping[str, Any] | None) -> HealthThresholds:
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"health thresholds must be a mapping, got {type(value).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown health threshold(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(value))

    def __post_init__(self) -> None:
        # Checked for every instance (a mapping from YAML/params or a direct construction): a string such as
        # "false" is truthy, and a gate must never pass a diverged run because of how a flag was spelled.
        for name in ("allow_diverged", "require_sensitivity_pass"):
            v = getattr(self, name)
            if v is None and name == "require_sensitivity_pass":
                continue
            if not isinstance(v, bool):
                raise ValueError(f"health threshold {name} must be true or false, got {v!r} ({type(v).__name__})")
        share = self.max_clipped_share
        if share is not None and (
            isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1
        ):
            raise ValueError(f"health threshold max_clipped_share must be a number in [0, 1] or null, got {share!r}")
        for name in ("max_nonfinite_steps", "max_restarts"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise ValueError(f"health threshold {name} must be a non-negative integer or null, got {v!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def health_summary(
    steps: Mapping[str, list],
    *,
    status: str,
    spec: Any = None,
    trip: Mapping[str, Any] | None = None,
    restarts: int = 0,
    sensitivity: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A flat dict of scalars (``None`` for undefined numbers)."""
    norms = np.asarray(steps.get("grad_norm", []), dtype=np.float64)
    losses = np.asarray(steps.get("loss", []), dtype=np.float64)
    finite_norms = norms[np.isfinite(norms)]
    n = len(norms)
    clipped = int(sum(steps.get("clipped", [])))
    raw_share = round(clipped / n, 6) if n else 0.0
    share, counted_above = raw_share, None
    clip = getattr(spec, "grad_clip_norm", None) if spec is not None else None
    if clip is not None and n:
        rows = _rows_per_step(spec)
        counted_above = float(clip) * max(1.0, math.sqrt(CLIP_REFERENCE_ROWS / rows))
        if counted_above > clip:  # else the clipped flags say it (the same steps)
            with np.errstate(invalid="ignore"):
                share = round(int(np.sum(norms > counted_above)) / n, 6)
    out: dict[str, Any] = {
        "status": status,
        "steps": n,
        "nonfinite_steps": int(sum(steps.get("nonfinite", []))),
        "max_grad_norm": _finite(float(finite_norms.max())) if len(finite_norms) else None,
        "median_grad_norm": _finite(float(np.median(finite_norms))) if len(finite_norms) else None,
        "clipped_steps": clipped,
        "clipped_share": share,
        "clipped_share_raw": raw_share,
        "final_loss": _finite(float(losses[-1])) if len(losses) else None,
        "restarts": int(restarts),
    }
    if counted_above is not None:
        out["clip_share_norm"] = round(counted_above, 6)  # the pre-clip norm above which a step counts
    if spec is not None:
        out["guards_enabled"] = bool(spec.guards.enabled)
        out["batch_mode"] = spec.batch_mode
    trip = trip or {}
    out["guard_tripped"] = bool(trip)
    if trip:
        out.update(
            guard_kind=trip.get("kind"),
            guard_reason=trip.get("reason"),
            guard_step=trip.get("step"),
            guard_epoch=trip.get("epoch"),
            guard_batch=trip.get("batch"),
            guard_rank=trip.get("rank"),
        )
    sens = sensitivity or {}
    out["sensitivity_status"] = sens.get("status", "skipped")
    if sens:
        out.update(
            sensitivity_metric=sens.get("metric"),
            sensitivity_spread=_finite(_num(sens.get("spread"))),
            sensitivity_max_spread=sens.get("max_spread"),
            sensitivity_values=",".join(
                f"{f:g}:{'nan' if v is None or not math.isfinite(v) else format(v, '.4f')}"
                for f, v in zip(sens.get("factors", []), sens.get("values", []), strict=False)
            ),
        )
    return out


def _rows_per_step(spec: Any) -> int:
    """Rows behind one optimizer step's (all-reduced) gradient: batch size x workers; 1 for single-row SGD.
    Full-batch runs count as large (no relaxation)."""
    mode = getattr(spec, "batch_mode", "minibatch")
    workers = max(int(getattr(spec, "num_workers", 1) or 1), 1)
    if mode == "sgd":
        return workers
    if mode == "full":
        return max(CLIP_REFERENCE_ROWS, 1)
    return max(int(getattr(spec, "batch_size", CLIP_REFERENCE_ROWS) or 1), 1) * workers


def assess_health(
    health: Mapping[str, Any] | None, thresholds: HealthThresholds | Mapping[str, Any] | None = None
) -> tuple[bool, list[str]]:
    """``(ok, reasons)``: one ``PASS ...``/``FAIL ...`` line per check; ``ok`` when nothing FAILs.

    A health summary without the keys a check needs fails that check (a gate must not pass by omission).
    """
    t = HealthThresholds.from_value(thresholds)
    if not isinstance(health, Mapping) or not health:
        return False, ["FAIL no health summary to assess"]
    reasons: list[str] = []

    def check(ok: bool, text: str) -> None:
        reasons.append(("PASS " if ok else "FAIL ") + text)

    status = health.get("status")
    if status is None:
        check(False, "health summary lacks 'status'")
    elif status == "diverged":
        why = health.get("guard_reason") or "no reason recorded"
        where = f" at step {health.get('guard_step')} (epoch {health.get('guard_epoch')}, batch {health.get('guard_batch')})"
        check(t.allow_diverged, f"training diverged{where}: {why}")
    else:
        check(status == "completed", f"training status is {status!r}")

    if t.max_nonfinite_steps is not None:
        value = health.get("nonfinite_steps")
        if not isinstance(value, int | float):
            check(False, "health summary lacks 'nonfinite_steps'")
        else:
            check(value <= t.max_nonfinite_steps, f"non-finite steps {value} (max {t.max_nonfinite_steps})")

    if t.max_clipped_share is not None:
        share = health.get("clipped_share")
        if share is None and isinstance(health.get("steps"), int) and health.get("clipped_steps") is not None:
            share = health["clipped_steps"] / health["steps"] if health["steps"] else 0.0
        if not isinstance(share, int | float):
            check(False, "health summary lacks 'clipped_share'")
        else:
            above = health.get("clip_share_norm")
            raw = health.get("clipped_share_raw")
            scaled = (
                f" (steps with a pre-clip norm above {above:.3g}, the clip norm scaled to "
                f"{CLIP_REFERENCE_ROWS} rows per step; clipped at all: {raw:.3f})"
                if isinstance(above, int | float) and isinstance(raw, int | float) and raw != share
                else ""
            )
            check(
                share <= t.max_clipped_share,
                f"share of clipped steps {share:.3f}{scaled} (max {t.max_clipped_share:g})",
            )

    sens = health.get("sensitivity_status", "skipped")
    if sens == "failed":
        detail = (
            f"spread {health.get('sensitivity_spread')} > {health.get('sensitivity_max_spread')} "
            f"on {health.get('sensitivity_metric')} [{health.get('sensitivity_values')}]"
        )
        check(t.require_sensitivity_pass is False, f"learning-rate sensitivity check failed: {detail}")
    elif sens != "passed":
        if t.require_sensitivity_pass:
            check(False, "the learning-rate sensitivity check is required (require_sensitivity_pass: true) but did "
                         "not run (training.sensitivity.enabled is false)")
        else:
            reasons.append("NOTE learning-rate sensitivity check not run (training.sensitivity.enabled is false)")
    elif sens == "passed":
        check(
            True,
            f"learning-rate sensitivity spread {health.get('sensitivity_spread')} "
            f"(max {health.get('sensitivity_max_spread')})",
        )

    if t.max_restarts is not None:
        restarts = health.get("restarts", 0)
        check(restarts <= t.max_restarts, f"worker restarts {restarts} (max {t.max_restarts})")

    ok = not any(r.startswith("FAIL") for r in reasons)
    return ok, reasons
