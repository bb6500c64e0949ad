"""The task-agnostic epoch engine: guarded gradient descent on tensors already on the device (``EpochRunner``,
``TrainingSession``) and ``fit_plain``, the same engine run in the calling process (the sensitivity check and
the benchmarks use it). See :mod:`gd_provider.core.training.loop` for the whole picture."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from gd_provider.core.tasks import Task
from gd_provider.core.tasks.metrics import ranking_metrics, ranking_metrics_numpy  # noqa: F401 (former home)
from gd_provider.core.training.collective import Collective
from gd_provider.core.training.components import (
    _finite_or_nan,
    build_module,
    configure_determinism,
    empty_steps,
    epoch_seed,
    evaluate,
    make_optimizer,
    seed_everything,
    stop_early,
    task_state_of,
)
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
