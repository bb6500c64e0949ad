"""Learning-rate schedules, as a pure function of the optimizer step (so a resumed run continues exactly).

Steps are 0-based optimizer steps counted over the whole run (all epochs). Every schedule may start with a
linear warm-up: for ``step < warmup_steps`` the rate is ``lr * (step + 1) / warmup_steps``; after it, the
schedule runs on ``t = step - warmup_steps``:

* ``constant``: ``lr``
* ``step``: ``lr * gamma ** (t // step_size)``
* ``cosine``: ``lr * 0.5 * (1 + cos(pi * t / T))`` with ``T = total_steps - warmup_steps`` (0 at the end)
"""

from __future__ import annotations

import math
from collections.abc import Callable

SCHEDULES = ("constant", "step", "cosine")


def lr_at(
    step: int,
    *,
    base_lr: float,
    schedule: str = "constant",
    total_steps: int = 1,
    warmup_steps: int = 0,
    step_size: int = 1,
    gamma: float = 0.1,
) -> float:
    """The learning rate of 0-based optimizer step ``step``."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = step - warmup_steps
    if schedule == "constant":
        return base_lr
    if schedule == "step":
        return base_lr * gamma ** (t // step_size)
    if schedule == "cosine":
        horizon = max(1, total_steps - warmup_steps)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(t, horizon) / horizon))
    raise ValueError(f"unknown lr schedule {schedule!r}; choose one of {list(SCHEDULES)}")


def schedule_for(spec, total_steps: int, lr: float | None = None) -> Callable[[int], float]:
    """``step -> lr`` for a ``TrainingSpec`` (``lr`` overrides ``spec.lr``, e.g. for a sensitivity run)."""
    base = spec.lr if lr is None else lr
    if spec.lr_schedule == "constant" and spec.warmup_steps == 0:
        return lambda step: base
    return lambda step: lr_at(
        step,
        base_lr=base,
        schedule=spec.lr_schedule,
        total_steps=total_steps,
        warmup_steps=spec.warmup_steps,
        step_size=spec.lr_step_size,
        gamma=spec.lr_gamma,
    )
