"""Training-health guards: decide from per-step loss / gradient-norm telemetry when a run must stop.

Plain Python + numpy (no torch, no Ray), so every rule is unit-testable on synthetic sequences.

Rules, checked for every optimizer step in order (the first rule that fires names the step's trip code;
when several fire, the most severe code wins - codes are ordered by severity):

* ``NONFINITE_LOSS`` / ``NONFINITE_GRAD`` - the step's loss or (pre-clip) global gradient norm is NaN/inf.
  Immediate.
* ``GRAD_EXPLOSION`` - the gradient norm is above the absolute bound ``max_grad_norm``. Immediate.
* ``GRAD_EXPLOSION_RELATIVE`` - for ``breach_steps`` consecutive steps the gradient norm is above both
  ``explosion_factor`` x the running median of the previous ``median_window`` accepted norms and
  ``(1 + explosion_rtol)`` x the highest of them (only once ``min_history`` norms have been accepted, and
  only while that median is above ``max(vanishing_eps, 1e-12)``: a median of ~0 - a dead gradient - is no
  scale to compare with, and such a run is the vanishing rule's to report).
* ``LOSS_SPIKE`` - either of two loss rules:
  *band*: for ``breach_steps`` consecutive steps the loss is above the band of its own recent past: the
  band's top is the highest of the previous ``spike_window`` accepted losses (``top``); a step breaches
  when its loss exceeds ``top + max(spike_rtol * |top|, spike_atol)`` (and, when ``spike_zscore`` is set,
  also the window's mean by ``spike_zscore`` standard deviations). From the second step on: the first
  step's loss, at the initial weights, is the first reference.
  *level*: for ``breach_steps`` consecutive steps the mean loss of the last ``level_window`` steps
  (``max(spike_window, spike_level_rows / batch rows)``: at least ``spike_level_rows`` rows) is above
  ``best + max((spike_level_factor - 1) * best, spike_atol)``, ``best`` = the lowest such mean so far. This
  catches a divergence slow enough for the band to follow it.
* ``VANISHING_GRADIENT`` - the gradient norm stayed below ``vanishing_eps`` for ``vanishing_steps``
  consecutive steps.
* ``NONFINITE_VAL_LOSS`` - checked once per epoch on the validation loss (``check_validation``).

Calibrated to noise: the statistical rules judge a step against the spread the run itself shows, not
against a fixed tolerance. A minibatch loss is noisy in proportion to how few (effective) rows it averages:
with ``batch_size: 32``, 3 % positives and ``pos_weight: auto`` (~32), a batch with a few positives has ~5x
the loss of one without, and its gradient ~100x the median norm at 16 rows. Such batches are in the
windows, so the bands (their tops) are as wide as the run's own batch-to-batch spread at its batch size
and class weighting (~10x the median loss at 16-32 rows, ~1.3x at 512), and one such batch is no breach.
What a band cannot absorb is persistence: a divergence keeps the loss (or the norm) above it step after
step, so ``breach_steps`` consecutive breaches - i.e. the smallest value of the last ``breach_steps``
steps, a noise-robust smoothed signal, is above the band - stop the run, while ordinary noise does so with
about the per-step breach rate to the power ``breach_steps``. A breaching step does not join its window
while the breach lasts (the reference does not chase a divergence); a breach that ends without a trip
is added back (it was noise, and is part of the spread). The level rule averages over a number of ROWS,
so its window is longer at smaller batches. ``benchmarks/bench_guard_noise.py`` measures both sides: false
alarms over clean seeds x batch sizes 16..4096 on the demo's data, and the steps to abort at lr 1/10/100.

The two statistical rules (relative explosion and loss spike) compare a step with its recent past; with a
batch of ONE row (``batch_mode="sgd"``) single-sample losses and gradients are far too noisy for that, so
the guard is built with ``statistical_rules=False`` there (non-finite, absolute-bound and vanishing rules
still apply).

Resumes: ``prime`` rebuilds the windows by replaying the recorded telemetry through the same rules (so
they hold what the live guard accepted); its losses are the cross-rank means, so the training loop then
puts back each rank's own loss window (``loss_window``/``restore_loss_window``, kept
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
    # relative explosion: norm > explosion_factor x running median of the last median_window accepted norms
    # and > (1 + explosion_rtol) x the highest of them (the run's own spread)
    explosion_factor: float | None = 50.0
    explosion_rtol: float = 2.0
    median_window: int = 50
    min_history: int = 10
    # vanishing: norm < vanishing_eps for vanishing_steps consecutive steps
    vanishing_eps: float | None = 1e-8
    vanishing_steps: int = 20
    # loss spike: loss > top + max(spike_rtol x |top|, spike_atol), top = the highest of the previous
    # spike_window accepted losses (the run's own spread; see the module docstring)
    spike_rtol: float | None = 2.0
    spike_atol: float = 0.0
    spike_zscore: float | None = None
    spike_window: int = 50
    # loss level: the mean loss of the last max(spike_window, spike_level_rows / batch rows) steps is above
    # spike_level_factor x the lowest such mean so far (spike_rtol: null switches this one off too)
    spike_level_factor: float | None = 4.0
    spike_level_rows: int = 4096
    # the statistical rules (loss spike, relative explosion) trip after this many consecutive breaches
    breach_steps: int = 3

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
            "spike_level_factor",
        )
        for name in positive_or_none:
            value = getattr(self, name)
            if value is None:
                continue
            if not _is_number(value) or value <= 0:
                return name, f"must be a positive number or null, got {value!r}"
        for name in ("spike_atol", "explosion_rtol"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                return name, f"must be a number >= 0, got {value!r}"
        if self.spike_level_factor is not None and self.spike_level_factor <= 1:
            return (
                "spike_level_factor",
                f"must be > 1 (a multiple of the lowest mean loss), got {self.spike_level_factor!r}",
            )
        if self.explosion_factor is not None and self.explosion_factor <= 1:
            return (
                "explosion_factor",
                f"must be > 1 (a multiple of the running median), got {self.explosion_factor!r}",
            )
        for name in ("median_window", "min_history", "vanishing_steps", "spike_window", "breach_steps",
                     "spike_level_rows"):
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

    def __init__(self, config: GuardConfig, *, statistical_rules: bool = True, batch_rows: int | None = None):
        self.config = config
        self.statistical_rules = statistical_rules
        # The level rule averages over at least spike_level_rows rows: more steps for smaller batches, whose
        # mean losses are noisier (``None``: spike_window steps).
        self.level_window = config.spike_window
        if batch_rows is not None and batch_rows > 0:
            self.level_window = max(config.spike_window, math.ceil(config.spike_level_rows / batch_rows))
        self._norms: deque[float] = deque()
        self._sorted_norms: list[float] = []
        self._losses: deque[float] = deque()
        self._loss_sum = 0.0
        self._loss_sq_sum = 0.0
        self._small_run = 0
        # Consecutive breaches of the statistical rules so far, and the breaching values held out of their
        # windows meanwhile (added back when the breach ends without a trip: it was noise).
        self._loss_breaches: list[float] = []
        self._norm_breaches: list[float] = []
        # The level rule: every finite loss of the last level_window steps, their sum, the lowest mean yet.
        self._recent: deque[float] = deque()
        self._recent_sum = 0.0
        self.best_level = math.inf
        self._level_breaches = 0
        self.level = self.level_ceiling = math.nan  # the last step's (for diagnostics)
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

    def norm_bound(self) -> float:
        """The gradient norm above which a step breaches the relative explosion rule (``nan``: not judged)."""
        cfg = self.config
        if not self.statistical_rules or cfg.explosion_factor is None or len(self._norms) < cfg.min_history:
            return math.nan
        median = self.running_median()
        # A median at (or below) the vanishing floor says nothing about the gradient's scale: x50 of ~0
        # trips on any positive norm, so a dead-gradient run would be reported as an explosion. The
        # absolute bound and the vanishing rule still judge such steps.
        if median <= self.median_floor:
            return math.nan
        # ... and never inside the run's own spread: at 16 rows with a class weight of ~32 a batch with
        # a few positives has ~100x the median norm (the median batch has none)
        return max(cfg.explosion_factor * median, (1.0 + cfg.explosion_rtol) * self._sorted_norms[-1])

    def loss_band(self) -> float:
        """The loss above which a step breaches (``nan`` before the first accepted loss)."""
        cfg = self.config
        if not self._losses or cfg.spike_rtol is None:
            return math.nan
        top = max(self._losses)
        bound = top + max(cfg.spike_rtol * abs(top), cfg.spike_atol)
        if cfg.spike_zscore is not None:
            n = len(self._losses)
            mean = self._loss_sum / n
            var = max(self._loss_sq_sum / n - mean * mean, 0.0)
            bound = max(bound, mean + cfg.spike_zscore * math.sqrt(var))
        return bound

    def _level(self, loss: float) -> tuple[float, float]:
        """Add ``loss`` to the level window; ``(mean of the window, the level that breaches)``."""
        cfg = self.config
        self._recent.append(loss)
        self._recent_sum += loss
        if len(self._recent) > self.level_window:
            self._recent_sum -= self._recent.popleft()
        if len(self._recent) < self.level_window or not self.statistical_rules:
            return math.nan, math.nan
        level = self._recent_sum / len(self._recent)
        best = self.best_level
        # spike_rtol: null switches both loss rules off (as it switched the loss-spike rule off before)
        if cfg.spike_level_factor is None or cfg.spike_rtol is None or not 0 < best < math.inf:
            return level, math.nan
        return level, best + max((cfg.spike_level_factor - 1.0) * best, cfg.spike_atol)

    def prime(self, losses: Iterable[float], norms: Iterable[float]) -> None:
        """Rebuild the running windows from recorded telemetry (e.g. after a resume) without tripping:
        the steps are replayed through the same rules, so the windows hold what the live guard accepted."""
        for loss, norm in zip(losses, norms, strict=False):
            self.observe(float(loss), float(norm))

    def loss_window(self) -> list[float]:
        """The losses the spike rule currently compares with (oldest first): this rank's own losses."""
        return list(self._losses)

    def restore_loss_window(self, losses: Iterable[float]) -> None:
        """Replace the loss window with ``losses`` (what ``loss_window`` returned on this rank, e.g. before
        a checkpoint): after ``prime``, so a resumed rank judges spikes against its own recent losses, as
        it did before the restart, not against the cross-rank mean that the telemetry records."""
        self._losses.clear()
        self._loss_sum = self._loss_sq_sum = 0.0
        self._loss_breaches = []
        finite = [v for v in map(float, losses) if math.isfinite(v)]
        for value in finite[-self.config.spike_window :]:
            self._push_loss(value)

    # ------------------------------------------------------------------ rules
    def observe(self, loss: float, grad_norm: float) -> StepVerdict:
        """Judge one step (then add it to the running windows unless it breached a statistical rule)."""
        cfg = self.config
        self.steps_seen += 1
        if not math.isfinite(loss):
            return StepVerdict(TripCode.NONFINITE_LOSS, loss, math.nan)
        if not math.isfinite(grad_norm):
            return StepVerdict(TripCode.NONFINITE_GRAD, grad_norm, math.nan)
        verdict = _OK
        if cfg.max_grad_norm is not None and grad_norm > cfg.max_grad_norm:
            verdict = StepVerdict(TripCode.GRAD_EXPLOSION, grad_norm, cfg.max_grad_norm)
        # relative explosion: breaching norms are held out of the median window while the breach lasts
        bound = self.norm_bound()
        if grad_norm > bound:  # False for a nan bound
            self._norm_breaches.append(grad_norm)
            if verdict is _OK and len(self._norm_breaches) >= cfg.breach_steps:
                verdict = StepVerdict(TripCode.GRAD_EXPLOSION_RELATIVE, grad_norm, bound)
        else:
            for held in self._norm_breaches:
                self._push_norm(held)
            self._norm_breaches = []
            self._push_norm(grad_norm)
        # loss spike: the same, against the top of the loss window
        band = self.loss_band() if self.statistical_rules else math.nan
        if loss > band:
            self._loss_breaches.append(loss)
            if verdict is _OK and len(self._loss_breaches) >= cfg.breach_steps:
                verdict = StepVerdict(TripCode.LOSS_SPIKE, loss, band)
        else:
            for held in self._loss_breaches:
                self._push_loss(held)
            self._loss_breaches = []
            self._push_loss(loss)
        # loss level: the smoothed loss far above the lowest it has been (a slow divergence, which the band
        # follows); only once level_window steps have been seen
        level, ceiling = self.level, self.level_ceiling = self._level(loss)
        if level > ceiling:  # False for a nan ceiling
            self._level_breaches += 1
            if verdict is _OK and self._level_breaches >= cfg.breach_steps:
                verdict = StepVerdict(TripCode.LOSS_SPIKE, level, ceiling)
        else:
            self._level_breaches = 0
            self.best_level = min(self.best_level, level) if math.isfinite(level) else self.best_level
        if cfg.vanishing_eps is not None and grad_norm < cfg.vanishing_eps:
            self._small_run += 1
            if verdict is _OK and self._small_run >= cfg.vanishing_steps:
                verdict = StepVerdict(TripCode.VANISHING_GRADIENT, grad_norm, cfg.vanishing_eps)
        else:
            self._small_run = 0
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
            f"gradient explosion: norm {value:.4g} > {threshold:.4g} for {config.breach_steps} consecutive steps "
            f"(the larger of explosion_factor={config.explosion_factor:g} x running median of the last "
            f"{config.median_window} accepted norms and (1 + explosion_rtol={config.explosion_rtol:g}) x their "
            "highest)"
        )
    if code is TripCode.LOSS_SPIKE:
        return (
            f"loss spike: {value:.4g} > {threshold:.4g} for {config.breach_steps} consecutive steps (the loss "
            f"above the band of the run's own losses: the highest of the previous {config.spike_window} + "
            f"max(spike_rtol={config.spike_rtol:g} x it, spike_atol={config.spike_atol:g})"
            + (f" or their mean + {config.spike_zscore:g} sd" if config.spike_zscore is not None else "")
            + (f"; or the mean loss of the last >= {config.spike_level_rows} rows above "
               f"spike_level_factor={config.spike_level_factor:g} x its lowest"
               if config.spike_level_factor is not None else "")
            + ")"
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
