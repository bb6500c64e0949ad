"""Training-health guards: decide from per-step loss / gradient-norm telemetry when a run must stop.

Plain Python + numpy (no torch, no Ray), so every rule is unit-testable on synthetic sequences.

Rules, checked for every optimizer step in order (the first rule that fires names the step's trip code;
when several fire, the most severe code wins - codes are ordered by severity):

* ``NONFINITE_LOSS`` / ``NONFINITE_GRAD`` - the step's loss or (pre-clip) global gradient norm is NaN/inf.
* ``GRAD_EXPLOSION`` - the gradient norm is above the absolute bound ``max_grad_norm``.
* ``GRAD_EXPLOSION_RELATIVE`` - the gradient norm is above ``explosion_factor`` x the running median of the
  previous ``median_window`` finite norms (only once ``min_history`` norms have been seen, and only while
  that median is above ``max(vanishing_eps, 1e-12)``: a median of ~0 - a dead gradient - is no scale to
  compare with, and such a run is the vanishing rule's to report).
* ``LOSS_SPIKE`` - after ``spike_window`` finite losses have been seen, the loss exceeds the running mean
  ``mu`` of the previous ``spike_window`` losses by at least ``spike_rtol * |mu|`` AND by at least
  ``spike_atol`` (and, when ``spike_zscore`` is set, by at least ``spike_zscore`` standard deviations of
  that window). This is Lightning Fabric's ``SpikeDetection`` rule (running mean over a window, relative and
  absolute tolerance that must both be exceeded) plus an optional z-score condition.
* ``VANISHING_GRADIENT`` - the gradient norm stayed below ``vanishing_eps`` for ``vanishing_steps``
  consecutive steps.
* ``NONFINITE_VAL_LOSS`` - checked once per epoch on the validation loss (``check_validation``).

The two statistical rules (relative explosion and loss spike) compare a step with its recent past; with a
batch of ONE row (``batch_mode="sgd"``) single-sample losses and gradients are far too noisy for that, so
the guard is built with ``statistical_rules=False`` there (non-finite, absolute-bound and vanishing rules
still apply).

Resumes: ``prime`` rebuilds the windows from the recorded telemetry, whose losses are the cross-rank means;
the training loop then puts back each rank's own loss window (``loss_window``/``restore_loss_window``, kept
in the checkpoint), so a resumed rank judges loss spikes on the same quantity as before the restart.

Collective decisions: every rank runs its own guard on its own (local) losses; at each check point the
ranks all-reduce (MAX) one packed integer (``pack_decision``) holding (severity code, earliest step,
lowest rank), so all ranks agree on whether to stop, at which step the trip happened and which rank saw it.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from enum import IntEnum
from typing import Any

import numpy as np


class TripCode(IntEnum):
    """Why a guard tripped; a higher value is more severe (and wins the collective MAX)."""

    OK = 0
    VANISHING_GRADIENT = 1
    LOSS_SPIKE = 2
    GRAD_EXPLOSION_RELATIVE = 3
    GRAD_EXPLOSION = 4
    NONFINITE_VAL_LOSS = 5
    NONFINITE_GRAD = 6
    NONFINITE_LOSS = 7

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class GuardConfig:
    """Thresholds of the guards; ``None`` switches a rule off. Part of ``TrainingSpec`` as ``guards``."""

    enabled: bool = True
    # absolute bound on the pre-clip global gradient norm
    max_grad_norm: float | None = 1e4
    # relative explosion: norm > explosion_factor x running median of the last median_window norms
    explosion_factor: float | None = 50.0
    median_window: int = 50
    min_history: int = 10
    # vanishing: norm < vanishing_eps for vanishing_steps consecutive steps
    vanishing_eps: float | None = 1e-8
    vanishing_steps: int = 20
    # loss spike vs the mean of the previous spike_window losses (see the module docstring)
    spike_rtol: float | None = 2.0
    spike_atol: float = 0.1
    spike_zscore: float | None = None
    spike_window: int = 20

    @classmethod
    def from_value(cls, value: Any) -> GuardConfig:
        """A ``GuardConfig`` from itself or a mapping; raises ``KeyError`` naming an unknown key."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"expected a mapping, got {type(value).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise KeyError(unknown[0])
        return cls(**value)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def problem(self) -> tuple[str, str] | None:
        """``(field, message)`` for the first invalid setting, or ``None``."""
        if not isinstance(self.enabled, bool):
            return "enabled", f"must be true or false, got {self.enabled!r}"
        positive_or_none = (
            "max_grad_norm",
            "explosion_factor",
            "vanishing_eps",
            "spike_rtol",
            "spike_zscore",
        )
        for name in positive_or_none:
            value = getattr(self, name)
            if value is None:
                continue
            if not _is_number(value) or value <= 0:
                return name, f"must be a positive number or null, got {value!r}"
        if not _is_number(self.spike_atol) or self.spike_atol < 0:
            return "spike_atol", f"must be a number >= 0, got {self.spike_atol!r}"
        if self.explosion_factor is not None and self.explosion_factor <= 1:
            return (
                "explosion_factor",
                f"must be > 1 (a multiple of the running median), got {self.explosion_factor!r}",
            )
        for name in ("median_window", "min_history", "vanishing_steps", "spike_window"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                return name, f"must be an integer >= 1, got {value!r}"
        if self.min_history > self.median_window:
            return "min_history", f"must be <= median_window ({self.median_window}), got {self.min_history}"
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class StepVerdict:
    """The outcome of one step: ``code`` (``TripCode``), the offending ``value`` and the ``threshold``."""

    code: TripCode
    value: float = math.nan
    threshold: float = math.nan


_OK = StepVerdict(TripCode.OK)
# The smallest running median of gradient norms the relative explosion rule compares against (see
# ``TrainingGuard.median_floor``): below it a multiple of the median is no meaningful bound.
MEDIAN_FLOOR = 1e-12


class TrainingGuard:
    """Stateful per-rank guard; feed it every step's (loss, grad norm) in order with ``observe``/``check``."""

    def __init__(self, config: GuardConfig, *, statistical_rules: bool = True):
        self.config = config
        self.statistical_rules = statistical_rules
        self._norms: deque[float] = deque()
        self._sorted_norms: list[float] = []
        self._losses: deque[float] = deque()
        self._loss_sum = 0.0
        self._loss_sq_sum = 0.0
        self._small_run = 0
        self.steps_seen = 0
        # The relative explosion rule is skipped while the running median is at or below this floor.
        self.median_floor = max(config.vanishing_eps or 0.0, MEDIAN_FLOOR)

    # ------------------------------------------------------------------ state
    def _push_norm(self, norm: float) -> None:
        window = self.config.median_window
        self._norms.append(norm)
        bisect.insort(self._sorted_norms, norm)
        if len(self._norms) > window:
            old = self._norms.popleft()
            del self._sorted_norms[bisect.bisect_left(self._sorted_norms, old)]

    def _push_loss(self, loss: float) -> None:
        self._losses.append(loss)
        self._loss_sum += loss
        self._loss_sq_sum += loss * loss
        if len(self._losses) > self.config.spike_window:
            old = self._losses.popleft()
            self._loss_sum -= old
            self._loss_sq_sum -= old * old

    def running_median(self) -> float:
        s = self._sorted_norms
        if not s:
            return math.nan
        mid = len(s) // 2
        return s[mid] if len(s) % 2 else 0.5 * (s[mid - 1] + s[mid])

    def running_loss_mean(self) -> float:
        return self._loss_sum / len(self._losses) if self._losses else math.nan

    def prime(self, losses: Iterable[float], norms: Iterable[float]) -> None:
        """Rebuild the running windows from recorded telemetry (e.g. after a resume) without tripping."""
        for loss, norm in zip(losses, norms, strict=False):
            loss, norm = float(loss), float(norm)
            if math.isfinite(loss):
                self._push_loss(loss)
            if math.isfinite(norm):
                self._push_norm(norm)
                eps = self.config.vanishing_eps
                self._small_run = self._small_run + 1 if eps is not None and norm < eps else 0
            self.steps_seen += 1

    def loss_window(self) -> list[float]:
        """The losses the spike rule currently compares with (oldest first): this rank's own losses."""
        return list(self._losses)

    def restore_loss_window(self, losses: Iterable[float]) -> None:
        """Replace the loss window with ``losses`` (what ``loss_window`` returned on this rank, e.g. before
        a checkpoint): after ``prime``, so a resumed rank judges spikes against its own recent losses, as
        it did before the restart, not against the cross-rank mean that the telemetry records."""
        self._losses.clear()
        self._loss_sum = self._loss_sq_sum = 0.0
        finite = [v for v in map(float, losses) if math.isfinite(v)]
        for value in finite[-self.config.spike_window :]:
            self._push_loss(value)

    # ------------------------------------------------------------------ rules
    def observe(self, loss: float, grad_norm: float) -> StepVerdict:
        """Judge one step (then add it to the running windows)."""
        cfg = self.config
        self.steps_seen += 1
        if not math.isfinite(loss):
            return StepVerdict(TripCode.NONFINITE_LOSS, loss, math.nan)
        if not math.isfinite(grad_norm):
            return StepVerdict(TripCode.NONFINITE_GRAD, grad_norm, math.nan)
        verdict = _OK
        if cfg.max_grad_norm is not None and grad_norm > cfg.max_grad_norm:
            verdict = StepVerdict(TripCode.GRAD_EXPLOSION, grad_norm, cfg.max_grad_norm)
        elif (
            self.statistical_rules
            and cfg.explosion_factor is not None
            and len(self._norms) >= cfg.min_history
        ):
            median = self.running_median()
            # A median at (or below) the vanishing floor says nothing about the gradient's scale: x50 of
            # ~0 trips on any positive norm, so a dead-gradient run would be reported as an explosion.
            # The absolute bound and the vanishing rule still judge such steps.
            if median > self.median_floor:
                bound = cfg.explosion_factor * median
                if grad_norm > bound:
                    verdict = StepVerdict(TripCode.GRAD_EXPLOSION_RELATIVE, grad_norm, bound)
        if verdict is _OK and self.statistical_rules and cfg.spike_rtol is not None:
            n = len(self._losses)
            if n >= cfg.spike_window:
                mean = self._loss_sum / n
                excess_needed = max(cfg.spike_rtol * abs(mean), cfg.spike_atol)
                if cfg.spike_zscore is not None:
                    var = max(self._loss_sq_sum / n - mean * mean, 0.0)
                    excess_needed = max(excess_needed, cfg.spike_zscore * math.sqrt(var))
                if loss - mean >= excess_needed and loss > mean:
                    verdict = StepVerdict(TripCode.LOSS_SPIKE, loss, mean + excess_needed)
        if cfg.vanishing_eps is not None and grad_norm < cfg.vanishing_eps:
            self._small_run += 1
            if verdict is _OK and self._small_run >= cfg.vanishing_steps:
                verdict = StepVerdict(TripCode.VANISHING_GRADIENT, grad_norm, cfg.vanishing_eps)
        else:
            self._small_run = 0
        self._push_loss(loss)
        self._push_norm(grad_norm)
        return verdict

    def check(self, losses: np.ndarray, norms: np.ndarray) -> tuple[int, StepVerdict] | None:
        """Observe a run of steps; ``(index, verdict)`` of the first step that trips, else ``None``.

        Steps after a trip are not observed (the run stops there).
        """
        for i, (loss, norm) in enumerate(zip(losses.tolist(), norms.tolist(), strict=True)):
            verdict = self.observe(loss, norm)
            if verdict.code:
                return i, verdict
        return None


def check_validation(val_loss: float) -> StepVerdict:
    """The per-epoch rule: a non-finite validation loss stops the run."""
    if not math.isfinite(val_loss):
        return StepVerdict(TripCode.NONFINITE_VAL_LOSS, val_loss, math.nan)
    return _OK


def describe(code: int, value: float, threshold: float, config: GuardConfig) -> str:
    """A human-readable reason for a trip (the same text on every rank)."""
    code = TripCode(code)
    if code is TripCode.NONFINITE_LOSS:
        return f"non-finite training loss ({value})"
    if code is TripCode.NONFINITE_GRAD:
        return f"non-finite gradient norm ({value})"
    if code is TripCode.NONFINITE_VAL_LOSS:
        return f"non-finite validation loss ({value})"
    if code is TripCode.GRAD_EXPLOSION:
        return f"gradient explosion: norm {value:.4g} > absolute bound max_grad_norm={threshold:.4g}"
    if code is TripCode.GRAD_EXPLOSION_RELATIVE:
        return (
            f"gradient explosion: norm {value:.4g} > explosion_factor={config.explosion_factor:g} x running "
            f"median of the last {config.median_window} norms = {threshold:.4g}"
        )
    if code is TripCode.LOSS_SPIKE:
        return (
            f"loss spike: loss {value:.4g} >= {threshold:.4g} (mean of the previous {config.spike_window} "
            f"losses + max(spike_rtol={config.spike_rtol:g} x mean, spike_atol={config.spike_atol:g}"
            + (f", {config.spike_zscore:g} sd" if config.spike_zscore is not None else "")
            + "))"
        )
    if code is TripCode.VANISHING_GRADIENT:
        return (
            f"vanishing gradient: norm < vanishing_eps={config.vanishing_eps:g} for "
            f"{config.vanishing_steps} consecutive steps (last {value:.3g})"
        )
    return "ok"


# ---------------------------------------------------------------------------------------------- collective
_CODE_SHIFT = 56
_STEP_BITS = 40
_RANK_BITS = 16
_STEP_MAX = (1 << _STEP_BITS) - 1
_RANK_MAX = (1 << _RANK_BITS) - 1


def pack_decision(code: int, step: int, rank: int) -> int:
    """One int64 whose MAX over ranks is (most severe code, then earliest step, then lowest rank).

    ``code=0`` (no trip) packs to 0. ``step`` must be in [0, 2**40), ``rank`` in [0, 2**16).
    """
    if not code:
        return 0
    if not 0 < code < 128:
        raise ValueError(f"trip code out of range: {code}")
    if not 0 <= step <= _STEP_MAX:
        raise ValueError(f"step out of range: {step}")
    if not 0 <= rank <= _RANK_MAX:
        raise ValueError(f"rank out of range: {rank}")
    return (code << _CODE_SHIFT) | ((_STEP_MAX - step) << _RANK_BITS) | (_RANK_MAX - rank)


def unpack_decision(packed: int) -> tuple[int, int, int]:
    """``(code, step, rank)``; ``(0, -1, -1)`` when nobody tripped."""
    if not packed:
        return 0, -1, -1
    code = packed >> _CODE_SHIFT
    step = _STEP_MAX - ((packed >> _RANK_BITS) & _STEP_MAX)
    rank = _RANK_MAX - (packed & _RANK_MAX)
    return code, step, rank


def combine_decisions(packed: Iterable[int]) -> tuple[int, int, int]:
    """What ``all_reduce(MAX)`` of every rank's packed decision yields, unpacked (for tests/single process)."""
    return unpack_decision(max(packed, default=0))


@dataclass
class GuardTrip:
    """A collective stop decision: what tripped, where, and on which rank."""

    code: int
    reason: str
    step: int  # 1-based global optimizer step that tripped
    epoch: int
    batch: int  # 0-based batch index within the epoch
    rank: int
    value: float
    threshold: float

    @property
    def kind(self) -> str:
        return TripCode(self.code).label

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "kind": self.kind}


def decide_collectively(
    local: tuple[int, StepVerdict] | None,
    *,
    rank: int,
    first_step: int,
    reduce_max: Callable[[int], int],
    share_floats: Callable[[list[float]], list[float]],
) -> tuple[int, int, int, float, float]:
    """Agree across ranks on the most severe (then earliest) trip.

    ``local`` is this rank's ``(index, verdict)`` from ``TrainingGuard.check`` (index relative to
    ``first_step``, the 1-based step of the window's first entry), or ``None``. ``reduce_max`` all-reduces
    an int with MAX; ``share_floats`` all-reduces a list of floats with SUM - it is only called when someone
    tripped (then on every rank), and only the winning rank contributes, so every rank learns the value and
    threshold. Returns ``(code, step, rank, value, threshold)``; ``code == 0`` means carry on.
    """
    if local is None:
        packed = 0
    else:
        index, verdict = local
        packed = pack_decision(int(verdict.code), first_step + index, rank)
    code, step, winner = unpack_decision(reduce_max(packed))
    if not code:
        return 0, -1, -1, math.nan, math.nan
    mine = [0.0, 0.0]
    if winner == rank and local is not None:
        mine = [float(local[1].value), float(local[1].threshold)]
    value, threshold = share_floats(mine)
    return code, step, winner, value, threshold
