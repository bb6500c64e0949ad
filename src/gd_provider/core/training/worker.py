"""``train_loop_per_worker``: the Ray Train worker (load its shard, resume, run the engine, report and checkpoint
per epoch, stop collectively when the guards say so)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from gd_provider.core.tasks.metrics import ranking_metrics, ranking_metrics_numpy  # noqa: F401 (former home)
from gd_provider.core.training.checkpoint import (
    HISTORY_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    RUN_STATE_FILE,
    STEPS_FILE,
    TRAIN_ARRAYS,
    VAL_ARRAYS,
    _save_checkpoint_files,
    latest_checkpoint_on_disk,
    read_progress,
)
from gd_provider.core.training.collective import Collective, TorchDistCollective
from gd_provider.core.training.components import (
    add_python_paths,
    build_module,
    configure_determinism,
    empty_steps,
    load_arrays,
    load_labels,
    make_optimizer,
    seed_everything,
    shard_rows,
    task_state_of,
)
from gd_provider.core.training.engine import TrainingSession
from gd_provider.core.training.spec import TrainingSpec


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
