"""The guarded training loop: one engine for Ray Train workers and for plain in-process runs.

``TrainingSession`` runs epochs of (guarded) gradient descent on tensors already on the device; the
collective operations it needs go through a ``Collective`` (identity in a single process, torch.distributed
in Ray Train workers). ``train_loop_per_worker`` is the Ray Train entry point; ``fit_plain`` runs the same
engine in the calling process (the sensitivity check and the benchmarks use it).

The engine is task-agnostic: what is predicted is the spec's task plug-in (``spec.task_plugin()``, see
:mod:`gd_provider.core.tasks`). It gives the loss (``task.make_loss(spec.loss, state, device)``), the model's
output width (the model is ``core.models.build(spec.model, input_dim, task.output_width, kwargs)``) and the
per-epoch metrics: ``val_loss`` plus ``task.epoch_metrics(labels, task.validation_scores(outputs, state))``.
``state`` is what the task learned from the training labels (``task.fit_state``: a class weight, a target
scale), fitted once by the driver and passed to every worker in ``config["task_state"]``.

Data: the driver (``runner.run_training``) preprocesses once and writes ``train.npz`` / ``val.npz`` (arrays
``x`` float32, ``y`` float32 = the loss's targets ``task.targets(labels, state)``, and ``y_label`` float32 =
the encoded labels the metrics compare with) to ``config["data_dir"]``. Every worker loads them itself and
takes rows ``rank::world_size`` of the training set, truncated so all ranks run the same number of steps
(DDP and ``ray.train.report`` are collective: every rank must do each step and each report).

Per step the loop keeps loss and gradient norm (what ``clip_grad_norm_`` returns, i.e. before clipping) in
a tensor on the device; learning rate, clipped flag and non-finite flag are derived on the host. Every
``spec.sync_every_k_steps`` steps and at the end of each epoch the new rows are copied to the host, each rank
runs its ``TrainingGuard`` on its own losses, and the ranks agree on a stop decision with one int64
all-reduce (MAX) - so all ranks stop after the same step and call ``ray.train.report`` equally often.

Per epoch every rank calls ``ray.train.report``; rank 0 attaches a checkpoint with ``model.pt`` (state dict
of the unwrapped module), ``optimizer.pt``, ``history.json`` (per-epoch metrics so far), ``steps.json``
(per-step telemetry so far) and ``run_state.json`` (status, resumes, timeline, and every rank's guard loss
window - the telemetry's losses are cross-rank means, each guard judges its own rank's losses, and a resumed
rank restores its own window). When the guards stop a run,
every rank reports once more; rank 0's checkpoint then holds the telemetry and ``run_state.json`` with
``status="diverged"`` and the trip, but no model. A restarted run resumes from the latest checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from gd_provider.core import models
from gd_provider.core.tasks import Task
from gd_provider.core.tasks.metrics import ranking_metrics, ranking_metrics_numpy  # noqa: F401 (former home)
from gd_provider.core.training.guards import (
    GuardTrip,
    StepVerdict,
    TrainingGuard,
    check_validation,
    decide_collectively,
    describe,
)
from gd_provider.core.training.schedule import schedule_for
from gd_provider.core.training.spec import TrainingSpec

MODEL_FILE = "model.pt"
OPTIMIZER_FILE = "optimizer.pt"
HISTORY_FILE = "history.json"
STEPS_FILE = "steps.json"
RUN_STATE_FILE = "run_state.json"
TRAIN_ARRAYS = "train.npz"
VAL_ARRAYS = "val.npz"

STEP_KEYS = ("step", "epoch", "loss", "grad_norm", "lr", "clipped", "nonfinite")
_EVAL_CHUNK = 65536


# ---------------------------------------------------------------------------------------------- basics
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


# ---------------------------------------------------------------------------------------------- collectives
class Collective:
    """Collectives of a single process: all identities. ``TorchDistCollective`` is the distributed one."""

    rank = 0
    world_size = 1

    def max_int(self, value: int) -> int:
        return value

    def sum_floats(self, values: list[float]) -> list[float]:
        return list(values)

    def mean_(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def gather_ints(self, values: list[int]) -> list[list[int]]:
        return [list(values)]

    def broadcast_flag(self, flag: bool) -> bool:
        return flag


class TorchDistCollective(Collective):
    """Collectives over the default ``torch.distributed`` process group (every rank must call each one)."""

    def __init__(self, rank: int, world_size: int, device: torch.device):
        self.rank, self.world_size, self.device = rank, world_size, device

    def max_int(self, value: int) -> int:
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def sum_floats(self, values: list[float]) -> list[float]:
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return [float(v) for v in t.cpu().tolist()]

    def mean_(self, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= self.world_size
        return tensor

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather_ints(self, values: list[int]) -> list[list[int]]:
        import torch.distributed as dist

        t = torch.zeros((self.world_size, len(values)), dtype=torch.int64, device=self.device)
        t[self.rank] = torch.tensor(values, dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return [[int(v) for v in row] for row in t.cpu().tolist()]

    def broadcast_flag(self, flag: bool) -> bool:
        import torch.distributed as dist

        t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=self.device)
        dist.broadcast(t, src=0)
        return bool(t.item())


# ---------------------------------------------------------------------------------------------- engine
@dataclass
class EpochOutcome:
    steps: int  # optimizer steps done in this epoch (fewer than planned when a guard tripped)
    losses: np.ndarray  # per step, mean over ranks
    norms: np.ndarray  # per step (pre-clip global norm: the same on every rank under DDP)
    lrs: np.ndarray
    trip: GuardTrip | None = None
    seconds: float = 0.0
    # Every rank's guard loss window at the end of the epoch (index = rank), when guarded.
    loss_windows: list[list[float]] | None = None


class EpochRunner:
    """Runs the optimizer steps of one epoch, recording telemetry and checking guards every k steps."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: nn.Module,
        xs: torch.Tensor,
        ys: torch.Tensor,
        *,
        spec: TrainingSpec,
        lr_fn: Callable[[int], float],
        device: torch.device,
        collective: Collective,
        guard: TrainingGuard | None,
        telemetry: bool = True,
    ):
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.xs, self.ys = xs, ys
        self.spec = spec
        self.n_rows = len(xs)
        self.batch_rows = spec.batch_rows(self.n_rows)
        self.steps_per_epoch = math.ceil(self.n_rows / self.batch_rows)
        self.lr_fn = lr_fn
        self.device = device
        self.collective = collective
        self.guard = guard
        self.telemetry = telemetry or guard is not None
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.max_norm = spec.grad_clip_norm
        self.sync_every = spec.sync_every_k_steps
        # bf16 autocast on the device's type. ``run_training`` refuses bf16 unless it resolves to cuda (never
        # a silent downgrade); the in-process engine (``fit_plain``) also autocasts on a CPU.
        self.bf16 = spec.precision == "bf16"
        self._lr: float | None = None

    def _set_lr(self, lr: float) -> None:
        if lr != self._lr:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self._lr = lr

    def _step(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        ctx = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with ctx:
            loss = self.loss_fn(self.model(xb), yb)
        loss.backward()
        if self.max_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        self.optimizer.step()
        return loss.detach(), norm.detach()

    def _check(
        self, buf: torch.Tensor, start: int, stop: int, epoch: int, steps_before: int
    ) -> GuardTrip | None:
        assert self.guard is not None
        host = buf[start:stop].cpu().numpy().astype(np.float64)
        local = self.guard.check(host[:, 0], host[:, 1])
        return self.decide(local, epoch=epoch, first_step=steps_before + start + 1, steps_before=steps_before)

    def decide(
        self,
        local: tuple[int, StepVerdict] | None,
        *,
        epoch: int,
        first_step: int,
        steps_before: int,
    ) -> GuardTrip | None:
        """The collective decision for a window of steps starting at 1-based step ``first_step``."""
        code, step, rank, value, threshold = decide_collectively(
            local,
            rank=self.collective.rank,
            first_step=first_step,
            reduce_max=self.collective.max_int,
            share_floats=self.collective.sum_floats,
        )
        if not code:
            return None
        assert self.guard is not None
        return GuardTrip(
            code=code,
            reason=describe(code, value, threshold, self.guard.config),
            step=step,
            epoch=epoch,
            batch=step - steps_before - 1,
            rank=rank,
            value=value,
            threshold=threshold,
        )

    def run_epoch(self, epoch: int, steps_before: int, order: torch.Tensor) -> EpochOutcome:
        """``steps_before``: optimizer steps done before this epoch (the schedule's position)."""
        started = time.perf_counter()
        n, bs = self.steps_per_epoch, self.batch_rows
        full = bs >= self.n_rows
        buf = torch.zeros((n, 2), dtype=torch.float32, device=self.device) if self.telemetry else None
        lrs = np.empty(n, dtype=np.float64)
        trip: GuardTrip | None = None
        checked = done = 0
        for i in range(n):
            lr = self.lr_fn(steps_before + i)
            self._set_lr(lr)
            lrs[i] = lr
            if full:
                xb, yb = self.xs, self.ys
            else:
                idx = order[i * bs : (i + 1) * bs]
                xb, yb = self.xs[idx], self.ys[idx]
            loss, norm = self._step(xb, yb)
            done = i + 1
            if buf is not None:
                torch.stack((loss.float(), norm.float()), out=buf[i])
            if self.guard is not None and buf is not None and (done % self.sync_every == 0 or done == n):
                trip = self._check(buf, checked, done, epoch, steps_before)
                checked = done
                if trip is not None:
                    break
        if buf is None:
            empty = np.zeros(0)
            return EpochOutcome(done, empty, empty, lrs[:done], None, time.perf_counter() - started)
        part, windows = self._epoch_end_exchange(buf[:done].clone())
        host = part.cpu().numpy().astype(np.float64)
        return EpochOutcome(
            done, host[:, 0], host[:, 1], lrs[:done], trip, time.perf_counter() - started, windows
        )

    def _epoch_end_exchange(self, part: torch.Tensor) -> tuple[torch.Tensor, list[list[float]] | None]:
        """The epoch's telemetry averaged over ranks and every rank's guard loss window, in ONE all-reduce.

        Losses are per rank: the telemetry records their mean (norms are identical on every rank under DDP).
        Each guard judges its own rank's losses, so a checkpoint keeps every rank's loss window (a resumed
        rank puts its own back; see ``TrainingSession``). The windows ride in the same SUM all-reduce as the
        telemetry (each rank fills its own slot, zeros elsewhere): no extra collective.
        """
        world, rank = self.collective.world_size, self.collective.rank
        own = self.guard.loss_window() if self.guard is not None else None
        if world == 1:
            return part, None if own is None else [own]
        n = part.numel()
        width = self.guard.config.spike_window if self.guard is not None else 0
        flat = torch.zeros(n + (world * (width + 1) if own is not None else 0), dtype=part.dtype, device=part.device)
        flat[:n] = part.reshape(-1)
        if own is not None:
            own = own[-width:]
            start = n + rank * width
            flat[start : start + len(own)] = torch.tensor(own, dtype=part.dtype)
            flat[n + world * width + rank] = len(own)
        self.collective.sum_(flat)
        mean = flat[:n].reshape(part.shape)
        mean /= world
        if own is None:
            return mean, None
        tail = flat[n:].cpu().tolist()
        lengths = [int(v) for v in tail[world * width :]]
        return mean, [tail[r * width : r * width + lengths[r]] for r in range(world)]


@dataclass
class TrainingSession:
    """Epochs of guarded training; holds the run's history and per-step telemetry.

    ``model`` may be a DDP wrapper; ``core`` is the unwrapped module (evaluation, state dict). ``ys``/``yv``
    are the loss's targets; ``yv_labels`` the validation rows' encoded labels for the task's metrics (default:
    ``yv``); ``task`` (default: the spec's) and ``task_state`` (its fitted state) score the validation rows.
    """

    spec: TrainingSpec
    model: nn.Module
    core: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    xs: torch.Tensor
    ys: torch.Tensor
    xv: torch.Tensor
    yv: torch.Tensor
    device: torch.device
    collective: Collective = field(default_factory=Collective)
    guarded: bool = True
    telemetry: bool = True
    lr: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: dict[str, list] = field(default_factory=empty_steps)
    trip: GuardTrip | None = None
    partial_epoch: dict[str, Any] | None = None
    # Every rank's guard loss window (index = rank) at the end of the last epoch: pass the checkpoint's to
    # resume; updated after each epoch (``train_loop_per_worker`` keeps it in ``run_state.json``).
    guard_loss_windows: list[list[float]] | None = None
    task: Task | None = None
    task_state: dict[str, Any] = field(default_factory=dict)
    yv_labels: np.ndarray | None = None
    # Optimizer steps done so far (the lr schedule's position). Counted separately from the telemetry: the
    # bare loop (``telemetry=False``) records no steps but must follow the same schedule.
    _steps_done: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        spec = self.spec
        if self.task is None:
            self.task = spec.task_plugin()
        if self.yv_labels is None:
            self.yv_labels = self.yv.cpu().numpy()
        recorded = self.history[-1].get("global_step", 0) if self.history else 0
        self._steps_done = max(len(self.steps["step"]), int(recorded or 0))
        guard = None
        if self.guarded and spec.guards.enabled:
            # batch_rows: the level rule averages over a number of rows, i.e. more steps for smaller batches
            guard = TrainingGuard(
                spec.guards, statistical_rules=spec.batch_mode != "sgd", batch_rows=spec.batch_rows(len(self.xs))
            )
            window = max(
                spec.guards.median_window, spec.guards.spike_window, spec.guards.vanishing_steps, guard.level_window
            )
            guard.prime(self.steps["loss"][-window:], self.steps["grad_norm"][-window:])
            # The recorded losses are cross-rank means; the live guard judged this rank's own losses.
            windows = self.guard_loss_windows
            if windows is not None and len(windows) == self.collective.world_size:
                guard.restore_loss_window(windows[self.collective.rank])
        self.guard = guard
        probe = spec.batch_rows(len(self.xs))
        self.total_steps = spec.epochs * math.ceil(len(self.xs) / probe)
        self.runner = EpochRunner(
            self.model,
            self.optimizer,
            self.loss_fn,
            self.xs,
            self.ys,
            spec=spec,
            lr_fn=schedule_for(spec, self.total_steps, self.lr),
            device=self.device,
            collective=self.collective,
            guard=guard,
            telemetry=self.telemetry,
        )

    @property
    def global_step(self) -> int:
        """Optimizer steps done so far in the run (also with ``telemetry=False``)."""
        return self._steps_done

    def _record_steps(self, epoch: int, outcome: EpochOutcome) -> None:
        if not len(outcome.losses):
            return
        start = len(self.steps["step"])
        clip = self.spec.grad_clip_norm
        s = self.steps
        s["step"] += list(range(start + 1, start + outcome.steps + 1))
        s["epoch"] += [epoch] * outcome.steps
        s["loss"] += outcome.losses.tolist()
        s["grad_norm"] += outcome.norms.tolist()
        s["lr"] += outcome.lrs.tolist()
        s["clipped"] += [int(clip is not None and v > clip) for v in outcome.norms.tolist()]
        s["nonfinite"] += [
            int(not (math.isfinite(a) and math.isfinite(b)))
            for a, b in zip(outcome.losses.tolist(), outcome.norms.tolist(), strict=True)
        ]

    def run(
        self,
        epochs: int | None = None,
        *,
        on_epoch_start: Callable[[int], None] | None = None,
        on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> GuardTrip | None:
        """Train up to epoch ``epochs`` (default ``spec.epochs``); returns the guard trip that stopped it."""
        spec, rank = self.spec, self.collective.rank
        n_rows = len(self.xs)
        last_epoch = spec.epochs if epochs is None else epochs
        self.model.train()
        for epoch in range(len(self.history) + 1, last_epoch + 1):
            # Rank 0 decides for everyone: a rank that stops alone would hang the others' next collective.
            if self.collective.broadcast_flag(stop_early(self.history, spec)):
                break
            if on_epoch_start is not None:
                on_epoch_start(epoch)
            gen_seed = epoch_seed(spec.seed, rank, epoch)
            torch.manual_seed(gen_seed)  # dropout
            order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(gen_seed)).to(self.device)
            steps_before = self.global_step
            outcome = self.runner.run_epoch(epoch, steps_before, order)
            self._record_steps(epoch, outcome)
            self._steps_done += outcome.steps
            if outcome.loss_windows is not None:
                self.guard_loss_windows = outcome.loss_windows
            if outcome.trip is not None:
                self.trip = outcome.trip
                self.partial_epoch = {
                    "epoch": epoch,
                    "steps_done": outcome.steps,
                    "steps_planned": self.runner.steps_per_epoch,
                    "train_loss": _finite_or_nan(outcome.losses, np.mean),
                    "epoch_seconds": outcome.seconds,
                }
                return self.trip
            metrics = self._epoch_metrics(epoch, outcome, n_rows)
            self.history.append(metrics)
            if self.guard is not None:
                verdict = check_validation(metrics["val_loss"])
                trip = self.runner.decide(
                    (0, verdict) if verdict.code else None,
                    epoch=epoch,
                    first_step=self.global_step,
                    steps_before=steps_before,
                )
                if trip is not None:
                    self.trip = trip
                    return trip
            if on_epoch_end is not None:
                on_epoch_end(epoch, metrics)
        return None

    def _epoch_metrics(self, epoch: int, outcome: EpochOutcome, n_rows: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        val = evaluate(self.core, self.xv, self.yv, self.loss_fn, self.task, self.task_state, self.yv_labels)
        losses, norms = outcome.losses, outcome.norms
        bs = self.runner.batch_rows
        if len(losses):
            rows = np.full(len(losses), float(bs))
            rows[-1] = n_rows - bs * (len(losses) - 1)
            train_loss = float(np.sum(losses * rows) / np.sum(rows))
        else:
            train_loss = math.nan
        nonfinite = ~(np.isfinite(losses) & np.isfinite(norms))
        clip = self.spec.grad_clip_norm
        return {
            "epoch": epoch,
            "train_loss": train_loss,
            **val,  # val_loss first, then the task's val_* metrics
            "lr": float(outcome.lrs[-1]) if len(outcome.lrs) else math.nan,
            "steps": outcome.steps,
            "global_step": self.global_step,
            "nonfinite_steps": int(nonfinite.sum()),
            "max_grad_norm": _finite_or_nan(norms, np.max),
            "mean_grad_norm": _finite_or_nan(norms, np.mean),
            "clipped_steps": int((norms > clip).sum()) if clip is not None else 0,
            "epoch_seconds": outcome.seconds + (time.perf_counter() - t0),
            "world_size": self.collective.world_size,
            "train_rows_per_worker": n_rows,
            "batch_rows": bs,
        }


# ---------------------------------------------------------------------------------------------- in-process
@dataclass
class PlainFit:
    history: list[dict[str, Any]]
    steps: dict[str, list]
    trip: GuardTrip | None
    model: nn.Module
    seconds: float
    task_state: dict[str, Any] = field(default_factory=dict)


def fit_plain(
    spec: TrainingSpec,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    task_state: Mapping[str, Any] | None = None,
    pos_weight: float | None = None,
    lr: float | None = None,
    epochs: int | None = None,
    guarded: bool = True,
    telemetry: bool = True,
    device: str | torch.device = "cpu",
) -> PlainFit:
    """The same engine as the Ray workers, in this process (single rank, no checkpoints, no Ray).

    ``y_train``/``y_val`` are *encoded labels* (``task.encode_labels``: 0/1, a class index, a value): the
    task turns them into the loss's targets with ``task_state`` - by default ``task.fit_state(y_train)``, as
    ``run_training`` fits it on the training split; ``pos_weight=`` is short for the binary task's
    ``task_state={"pos_weight": ...}``. The model is the spec's (``spec.model``: a built-in or a user's
    factory by import path). ``guarded=False, telemetry=False`` is the bare loop (benchmark baseline).
    ``lr``/``epochs`` override the spec's (sensitivity runs). Seeds exactly like rank 0 of a one-worker Ray
    run. ``PlainFit.task_state`` is the state it trained with.
    """
    t0 = time.perf_counter()
    dev = torch.device(device)
    task = spec.task_plugin()
    y_train = np.asarray(y_train, dtype=np.float32)
    y_val = np.asarray(y_val, dtype=np.float32)
    if task_state is not None and pos_weight is not None:
        raise ValueError("give task_state or pos_weight, not both")
    state = task_state_of(pos_weight) if pos_weight is not None else (
        dict(task_state) if task_state is not None else task.fit_state(y_train))
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    configure_determinism(spec.deterministic, dev)
    try:
        seed_everything(spec.seed)
        input_dim = int(x_train.shape[1])
        model = build_module(spec, input_dim, task).to(dev)
        optimizer = make_optimizer(spec, model.parameters(), lr)
        session = TrainingSession(
            spec=spec,
            model=model,
            core=model,
            optimizer=optimizer,
            loss_fn=task.make_loss(spec.loss or task.default_loss, state, dev),
            xs=_tensor(x_train, dev),
            ys=_tensor(task.targets(y_train, state), dev),
            xv=_tensor(x_val, dev),
            yv=_tensor(task.targets(y_val, state), dev),
            device=dev,
            guarded=guarded,
            telemetry=telemetry,
            lr=lr,
            task=task,
            task_state=state,
            yv_labels=y_val,
        )
        trip = session.run(epochs)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    return PlainFit(session.history, session.steps, trip, model, time.perf_counter() - t0, state)


def _tensor(values: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(device)


# ---------------------------------------------------------------------------------------------- Ray worker
def _save_checkpoint_files(
    directory: Path,
    *,
    history: list[dict[str, Any]],
    steps: dict[str, list],
    run_state: dict[str, Any],
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    if model is not None:
        torch.save(model.state_dict(), directory / MODEL_FILE)
    if optimizer is not None:
        torch.save(optimizer.state_dict(), directory / OPTIMIZER_FILE)
    (directory / HISTORY_FILE).write_text(json.dumps(history))
    (directory / STEPS_FILE).write_text(json.dumps(steps))
    (directory / RUN_STATE_FILE).write_text(json.dumps(run_state))


def read_progress(directory: Path) -> tuple[int, int, str] | None:
    """``(epochs, steps, status)`` of a complete checkpoint directory, or ``None`` if it is unusable."""
    try:
        history = json.loads((directory / HISTORY_FILE).read_text())
        steps = json.loads((directory / STEPS_FILE).read_text())
        state_file = directory / RUN_STATE_FILE
        state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    except (OSError, ValueError):
        return None
    status = state.get("status", "running")
    if status != "diverged" and not (
        (directory / MODEL_FILE).is_file() and (directory / OPTIMIZER_FILE).is_file()
    ):
        return None
    return len(history), len(steps.get("step", [])), status


def latest_checkpoint_on_disk(run_dir: str | os.PathLike[str]) -> Path | None:
    """The most advanced complete checkpoint under ``run_dir`` (``checkpoint_*`` directories).

    Ray Train registers a checkpoint only once the controller has collected every rank's report; a worker
    that dies right after reporting can leave a persisted but unregistered checkpoint behind, and the
    restarted group would then start over. Scanning the run's (local) storage finds it. A diverged
    checkpoint wins over others with the same progress; ties then go to the newest directory name.
    """
    root = Path(run_dir)
    if not root.is_dir():
        return None
    best: tuple[Any, ...] | None = None
    best_dir = None
    for directory in sorted(root.glob("checkpoint_*")):
        if not directory.is_dir():
            continue
        progress = read_progress(directory)
        if progress is None:
            continue
        key = (progress[0], progress[1], progress[2] == "diverged", directory.name)
        if best is None or key > best:
            best, best_dir = key, directory
    return best_dir


def checkpoint_for_epoch(run_dir: str | os.PathLike[str], epoch: int) -> Path | None:
    """The (newest) complete, non-diverged checkpoint under ``run_dir`` saved at the end of ``epoch``."""
    found = None
    for directory in sorted(Path(run_dir).glob("checkpoint_*")):
        progress = read_progress(directory) if directory.is_dir() else None
        if progress is not None and progress[0] == epoch and progress[2] != "diverged":
            found = directory
    return found


def _resume_directory(ray: Any, rank: int, run_dir: str | None, distributed: bool) -> tuple[str | None, str]:
    """The checkpoint directory every rank resumes from (rank 0 decides) and where it came from."""
    choice: list[Any] = [None, "none"]
    if rank == 0:
        checkpoint = ray.train.get_checkpoint()
        ray_dir = None
        if checkpoint is not None:
            local = Path(checkpoint.path)
            ray_dir = local if local.is_dir() else Path(checkpoint.to_directory())
        scanned = latest_checkpoint_on_disk(run_dir) if run_dir else None
        candidates = [(ray_dir, "ray"), (scanned, "storage_scan")]
        ranked = [(read_progress(d), d, src) for d, src in candidates if d is not None]
        found = [(p, d, src) for p, d, src in ranked if p is not None]
        if found:
            _, directory, source = max(found, key=lambda r: (r[0][0], r[0][1], r[2] == "ray"))
            choice = [str(directory), source]
    if distributed:
        import torch.distributed as dist

        dist.broadcast_object_list(choice, src=0)
    return choice[0], choice[1]


def _maybe_inject_failure(fault: dict[str, Any] | None, epoch: int, rank: int) -> None:
    """Test hook: ``{"epoch": e, "rank": r, "marker": path, "mode": "exit" | "raise"}`` kills rank ``r`` at
    the start of epoch ``e`` once (the marker file records that it happened)."""
    if not fault or epoch != int(fault["epoch"]) or rank != int(fault.get("rank", 0)):
        return
    marker = Path(fault["marker"])
    if marker.exists():
        return
    marker.write_text(json.dumps({"epoch": epoch, "rank": rank, "unix": time.time()}))
    if fault.get("mode", "exit") == "exit":
        os._exit(1)
    raise RuntimeError(f"injected failure at epoch {epoch} on rank {rank}")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    with contextlib.suppress(ImportError):  # every epoch's evaluation uses it: import it during start-up
        import sklearn.metrics  # noqa: F401

    entered = time.time()
    from gd_provider.core.training.logs import EpochProgress, configure_worker_logging

    configure_worker_logging()  # console lines carry their level: the driver logs each at it
    add_python_paths(config.get("python_paths"))  # a user's model factory / task class, by import path
    spec = TrainingSpec.from_dict(config["spec"])
    task = spec.task_plugin()
    data_dir = Path(config["data_dir"])
    # the task's state fitted by the driver (older configs: the binary task's pos_weight)
    state = task_state_of(config["task_state"] if "task_state" in config else config.get("pos_weight"))

    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    configure_determinism(spec.deterministic, device)
    seed_everything(spec.seed)
    distributed = world_size > 1 and dist.is_available() and dist.is_initialized()
    collective: Collective = TorchDistCollective(rank, world_size, device) if distributed else Collective()

    history: list[dict[str, Any]] = []
    steps = empty_steps()
    run_state: dict[str, Any] = {"status": "running", "resumes": [], "timeline": {}}
    model_state = optimizer_state = None
    resume_dir, resume_source = _resume_directory(ray, rank, config.get("run_dir"), distributed)
    if resume_dir is not None:
        ckpt = Path(resume_dir)
        history = json.loads((ckpt / HISTORY_FILE).read_text())
        steps = json.loads((ckpt / STEPS_FILE).read_text())
        if (ckpt / RUN_STATE_FILE).is_file():
            run_state = json.loads((ckpt / RUN_STATE_FILE).read_text())
        if run_state.get("status") != "diverged":
            model_state = torch.load(ckpt / MODEL_FILE, map_location="cpu", weights_only=True)
            optimizer_state = torch.load(ckpt / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    if run_state.get("status") == "diverged":
        # A diverged run that is resumed stays diverged: report its final state once more and stop.
        _report(
            ray, rank, history=history, steps=steps, run_state=run_state, metrics=_abort_metrics(run_state)
        )
        return
    if resume_dir is not None:
        run_state["resumes"].append(
            {
                "from_epoch": len(history),
                "from_step": len(steps["step"]),
                "source": resume_source,
                "unix": entered,
                "world_size": world_size,
            }
        )

    x_train, y_train = load_arrays(data_dir / TRAIN_ARRAYS)
    x_val, y_val = load_arrays(data_dir / VAL_ARRAYS)
    val_labels = load_labels(data_dir / VAL_ARRAYS)
    rows = shard_rows(len(x_train), rank, world_size)
    if len(rows) == 0:
        raise ValueError(f"{len(x_train)} training rows cannot be split over {world_size} workers")
    xs = torch.from_numpy(np.ascontiguousarray(x_train[rows])).to(device)
    ys = torch.from_numpy(np.ascontiguousarray(y_train[rows])).to(device)
    xv = torch.from_numpy(x_val).to(device)
    yv = torch.from_numpy(y_val).to(device)
    del x_train, y_train

    # Same initial weights on every rank (DDP also broadcasts rank 0's), independent of world size.
    model = build_module(spec, int(config["input_dim"]), task)
    if model_state is not None:
        model.load_state_dict(model_state)
    model = ray.train.torch.prepare_model(model)
    core = cast(nn.Module, model.module) if hasattr(model, "module") else model  # DDP wraps the model
    optimizer = make_optimizer(spec, model.parameters())
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)

    session = TrainingSession(
        spec=spec,
        model=model,
        core=core,
        optimizer=optimizer,
        loss_fn=task.make_loss(spec.loss or task.default_loss, state, device),
        xs=xs,
        ys=ys,
        xv=xv,
        yv=yv,
        device=device,
        collective=collective,
        history=history,
        steps=steps,
        guard_loss_windows=run_state.get("guard_loss_windows"),
        task=task,
        task_state=state,
        yv_labels=val_labels,
    )
    fault = config.get("fault_injection")
    timeline = run_state.setdefault("timeline", {})
    timeline.setdefault("loop_entered_unix", entered)
    timeline["torch_threads"] = torch.get_num_threads()

    def on_epoch_start(epoch: int) -> None:
        _maybe_inject_failure(fault, epoch, rank)
        now = time.time()
        timeline.setdefault("first_epoch_started_unix", now)
        timeline.setdefault("epoch_started_unix", {})[str(epoch)] = now

    progress = EpochProgress(spec) if rank == 0 else None  # one INFO line per epoch, in the task's log

    def on_epoch_end(epoch: int, metrics: dict[str, Any]) -> None:
        timeline["last_epoch_ended_unix"] = time.time()
        if progress is not None:
            done = int(metrics.get("steps") or 0)
            progress.log(metrics, session.steps["grad_norm"][-done:] if done else [])
        if session.guard_loss_windows is not None:
            run_state["guard_loss_windows"] = session.guard_loss_windows
        _report(
            ray,
            rank,
            history=session.history,
            steps=session.steps,
            run_state=run_state,
            metrics=metrics,
            model=core,
            optimizer=optimizer,
        )

    trip = session.run(on_epoch_start=on_epoch_start, on_epoch_end=on_epoch_end)
    if trip is None:
        return
    # Every rank got here after the same step; prove it (and keep it for the post-mortem).
    stopped = collective.gather_ints([session.global_step])
    run_state.update(
        status="diverged",
        trip=trip.to_dict(),
        stopped_at_step=session.global_step,
        stopped_steps_by_rank=[row[0] for row in stopped],
        partial_epoch=session.partial_epoch,
    )
    timeline["last_epoch_ended_unix"] = time.time()
    _report(
        ray,
        rank,
        history=session.history,
        steps=session.steps,
        run_state=run_state,
        metrics=_abort_metrics(run_state),
    )


def _abort_metrics(run_state: dict[str, Any]) -> dict[str, Any]:
    trip = run_state.get("trip") or {}
    return {
        "diverged": 1,
        "guard_code": int(trip.get("code", 0)),
        "guard_step": int(trip.get("step", -1)),
        "stopped_at_step": int(run_state.get("stopped_at_step", -1)),
    }


def _report(
    ray: Any,
    rank: int,
    *,
    history: list[dict[str, Any]],
    steps: dict[str, list],
    run_state: dict[str, Any],
    metrics: dict[str, Any],
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Every rank reports; rank 0 attaches the checkpoint."""
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        _save_checkpoint_files(
            Path(tmp), history=history, steps=steps, run_state=run_state, model=model, optimizer=optimizer
        )
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
