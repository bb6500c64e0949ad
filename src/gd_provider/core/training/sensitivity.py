"""Learning-rate sensitivity check: short in-process runs at ``lr x factor`` on a sample.

A model whose quality swings with small learning-rate changes is fragile: retraining tomorrow on slightly
different data may land somewhere else. The check trains the spec's model (same seed, same engine as the Ray
workers, guards on) for ``sensitivity.epochs`` epochs on ``sensitivity.sample_rows`` training rows (a seeded
sample), once per factor, and compares the final validation ``metric`` (one of the task's per-epoch
metrics; unset, the task's ``default_validation_metric``): it fails when ``max - min > max_spread`` or when
any run diverges / ends with a non-finite metric. The short runs use the task state fitted on the whole
training split (as the real run does), not one refitted on the sample. No Ray: plain torch in the calling
process.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gd_provider.core.training.loop import fit_plain
from gd_provider.core.training.spec import TrainingSpec


def sensitivity_spread(values: Sequence[float]) -> float:
    """``max - min`` of the values; ``nan`` if any value is non-finite or there are fewer than two."""
    vals = [float(v) if v is not None else math.nan for v in values]
    if len(vals) < 2 or not all(math.isfinite(v) for v in vals):
        return math.nan
    return max(vals) - min(vals)


def judge_sensitivity(
    factors: Sequence[float], values: Sequence[float], max_spread: float, metric: str = "metric"
) -> tuple[bool, float, str]:
    """``(ok, spread, reason)`` for per-factor metric values."""
    shown = ", ".join(
        f"lr x {f:g}: {v:.4f}" if v is not None and math.isfinite(v) else f"lr x {f:g}: {v}"
        for f, v in zip(factors, values, strict=True)
    )
    bad = [f for f, v in zip(factors, values, strict=True) if v is None or not math.isfinite(v)]
    if bad:
        return False, math.nan, f"{metric} is not finite for lr factor(s) {bad} ({shown})"
    spread = sensitivity_spread(values)
    if spread > max_spread:
        return False, spread, f"{metric} spread {spread:.4f} > max_spread {max_spread:g} ({shown})"
    return True, spread, f"{metric} spread {spread:.4f} <= max_spread {max_spread:g} ({shown})"


def _sample(n: int, rows: int, seed: int) -> np.ndarray:
    if n <= rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=rows, replace=False))


def run_sensitivity(
    spec: TrainingSpec,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    task_state: Mapping[str, Any] | None = None,
    pos_weight: float | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Run the check described by ``spec.sensitivity`` (whether or not it is ``enabled``) on ``device``.

    ``y_train``/``y_val``: encoded labels; ``task_state``: the task's state fitted on the whole training
    split (default: fitted on ``y_train``; ``pos_weight=`` is short for the binary task's)."""
    cfg = spec.sensitivity
    if task_state is None:
        task_state = {"pos_weight": float(pos_weight)} if pos_weight is not None else (
            spec.task_plugin().fit_state(np.asarray(y_train, dtype=np.float32)))
    t0 = time.perf_counter()
    train_idx = _sample(len(x_train), cfg.sample_rows, spec.seed)
    val_idx = _sample(len(x_val), cfg.sample_rows, spec.seed + 1)
    xs, ys = x_train[train_idx], y_train[train_idx]
    xv, yv = x_val[val_idx], y_val[val_idx]
    short = spec.with_overrides(epochs=cfg.epochs, early_stopping_patience=None, num_workers=1)
    values: list[float] = []
    diverged: dict[str, str] = {}
    for factor in cfg.factors:
        fit = fit_plain(
            short,
            xs,
            ys,
            xv,
            yv,
            task_state=task_state,
            lr=spec.lr * factor,
            device=device,
        )
        if fit.trip is not None:
            diverged[f"{factor:g}"] = fit.trip.reason
            values.append(math.nan)
            continue
        last = fit.history[-1] if fit.history else {}
        value = last.get(str(cfg.metric), math.nan)
        values.append(float(value) if isinstance(value, int | float) else math.nan)
    ok, spread, reason = judge_sensitivity(cfg.factors, values, cfg.max_spread, str(cfg.metric))
    if diverged:
        reason += "; diverged: " + "; ".join(f"lr x {f}: {why}" for f, why in diverged.items())
    return {
        "status": "passed" if ok else "failed",
        "metric": cfg.metric,
        "factors": [float(f) for f in cfg.factors],
        "lrs": [spec.lr * f for f in cfg.factors],
        "values": values,
        "spread": spread,
        "max_spread": cfg.max_spread,
        "reason": reason,
        "diverged": diverged,
        "train_rows": len(train_idx),
        "val_rows": len(val_idx),
        "epochs": cfg.epochs,
        "seconds": time.perf_counter() - t0,
    }
