"""The pieces the training engine is made of: seeding and determinism, data loading and sharding, the model,
optimizer and loss of a spec, evaluation, and the best-epoch / early-stopping rules (plain torch)."""

from __future__ import annotations

import math
import os
import random
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gd_provider.core import models
from gd_provider.core.tasks import Task
from gd_provider.core.tasks.metrics import ranking_metrics, ranking_metrics_numpy  # noqa: F401 (former home)
from gd_provider.core.training.spec import TrainingSpec

STEP_KEYS = ("step", "epoch", "loss", "grad_norm", "lr", "clipped", "nonfinite")
_EVAL_CHUNK = 65536


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def configure_determinism(enabled: bool, device: torch.device | None = None) -> None:
    """``torch.use_deterministic_algorithms(enabled)``; on cuda also the cuBLAS workspace it requires."""
    if enabled and device is not None and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """Seed for one epoch on one rank: shuffling and dropout do not depend on where a run resumed."""
    return (seed * 1_000_003 + rank * 10_007 + epoch) % (2**63 - 1)


def load_arrays(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: features and the loss's targets."""
    with np.load(path) as data:
        return data["x"].astype(np.float32, copy=False), data["y"].astype(np.float32, copy=False)


def load_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """The encoded labels of an arrays file (``y_label``; ``y`` in files that have no separate labels)."""
    with np.load(path) as data:
        key = "y_label" if "y_label" in data.files else "y"
        return data[key].astype(np.float32, copy=False)


def build_module(spec: TrainingSpec, input_dim: int, task: Task | None = None) -> nn.Module:
    """The spec's model: ``core.models.build(spec.model, input_dim, task.output_width, kwargs)``."""
    task = task or spec.task_plugin()
    return models.build(spec.model, input_dim, task.output_width, spec.model_kwargs_for_factory())


def add_python_paths(paths: Sequence[str] | None) -> None:
    """Put the roots of a user's model / task modules on ``sys.path`` (a Ray worker's, a job's driver's) so
    the spec's import paths resolve there as in the process that submitted them."""
    for path in paths or ():
        if path and path not in sys.path and Path(path).is_dir():
            sys.path.append(path)


def shard_rows(n: int, rank: int, world_size: int) -> np.ndarray:
    """Row indices of this rank: ``rank::world_size``, truncated to ``n // world_size`` rows on every rank."""
    per_rank = n // world_size
    return np.arange(rank, n, world_size)[:per_rank]


def make_optimizer(spec: TrainingSpec, params: Any, lr: float | None = None) -> torch.optim.Optimizer:
    lr = spec.lr if lr is None else lr
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=spec.weight_decay)
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=spec.weight_decay)
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    raise ValueError(f"unknown optimizer {spec.optimizer!r}")


def task_state_of(state: Mapping[str, Any] | float | None) -> dict[str, Any]:
    """A task state; a bare number is the binary task's ``pos_weight`` (the engine's former argument)."""
    if state is None:
        return {}
    if isinstance(state, Mapping):
        return dict(state)
    return {"pos_weight": float(state)}


def make_loss(
    spec: TrainingSpec, state: Mapping[str, Any] | float, device: torch.device, task: Task | None = None
) -> nn.Module:
    """The task's loss for ``spec.loss`` (``state``: the task state, or the binary ``pos_weight``)."""
    task = task or spec.task_plugin()
    return task.make_loss(spec.loss or task.default_loss, task_state_of(state), device)


@torch.no_grad()
def evaluate(
    module: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: nn.Module,
    task: Task | None = None,
    state: Mapping[str, Any] | None = None,
    labels: np.ndarray | None = None,
) -> dict[str, float]:
    """``{"val_loss": ..., **task.epoch_metrics(...)}`` of ``module`` on ``x`` (module left in train mode).

    ``y``: the loss's targets (a tensor on the device); ``labels``: the encoded labels the metrics compare
    with (default: ``y``, as for the binary and multiclass tasks); ``task`` defaults to binary."""
    if task is None:
        from gd_provider.core.tasks import get_task

        task = get_task("binary")
    module.eval()
    try:
        outputs = torch.cat([module(x[i : i + _EVAL_CHUNK]) for i in range(0, len(x), _EVAL_CHUNK)])
        loss = float(loss_fn(outputs.float(), y).item()) if len(x) else math.nan
        scores = task.validation_scores(outputs, dict(state or {}))
    finally:
        module.train()
    truth = y.cpu().numpy() if labels is None else labels
    return {"val_loss": loss, **task.epoch_metrics(truth, scores)}


def empty_steps() -> dict[str, list]:
    return {k: [] for k in STEP_KEYS}


def _finite_or_nan(values: np.ndarray, fn: Any) -> float:
    finite = values[np.isfinite(values)]
    return float(fn(finite)) if len(finite) else math.nan


def best_epoch(history: list[dict[str, Any]], spec: TrainingSpec) -> dict[str, Any] | None:
    """The epoch with the best ``spec.early_stopping_metric`` (earliest on ties); ``None`` if none is finite."""
    metric = spec.early_stopping_metric
    sign = -1.0 if spec.validation_metrics[metric] else 1.0
    finite = [h for h in history if isinstance(h.get(metric), float) and math.isfinite(h[metric])]
    if not finite:
        return None
    return min(finite, key=lambda h: (sign * h[metric], h["epoch"]))


def stop_early(history: list[dict[str, Any]], spec: TrainingSpec) -> bool:
    """True when ``early_stopping_metric`` has not improved by more than ``early_stopping_min_delta`` for
    ``early_stopping_patience`` epochs (derived from the history, so it survives a resume)."""
    patience = spec.early_stopping_patience
    if not patience or not history:
        return False
    metric = spec.early_stopping_metric
    bigger_is_better = spec.validation_metrics[metric]
    best, best_epoch_no = None, None
    for entry in history:
        value = entry.get(metric, math.nan)
        if not isinstance(value, float) or not math.isfinite(value):
            continue
        improved = best is None or (
            value > best + spec.early_stopping_min_delta
            if bigger_is_better
            else value < best - spec.early_stopping_min_delta
        )
        if improved:
            best, best_epoch_no = value, entry["epoch"]
    if best_epoch_no is None:
        return False
    return history[-1]["epoch"] - best_epoch_no >= patience


def _stop_early(history: list[dict[str, Any]], patience: int | None) -> bool:
    """The original rule (val loss, no minimum delta); kept for callers of the old signature."""
    if not patience or not history:
        return False
    best_epoch_no, best = None, math.inf
    for entry in history:
        loss = entry.get("val_loss", math.nan)
        if isinstance(loss, float) and math.isfinite(loss) and loss < best:
            best, best_epoch_no = loss, entry["epoch"]
    return best_epoch_no is not None and history[-1]["epoch"] - best_epoch_no >= patience
