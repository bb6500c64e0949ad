"""The per-worker Ray Train loop (runs inside Ray Train workers; no Airflow here).

The driver (``runner.run_training``) preprocesses once and writes ``train.npz`` / ``val.npz`` (arrays ``x``
float32 and ``y`` float32) to ``config["data_dir"]``. Every worker loads them itself and takes rows
``rank::world_size`` of the training set, truncated so all ranks run the same number of steps (DDP and
``ray.train.report`` are collective: every rank must do each step and each report).

Per step the loop records loss, gradient norm (what ``clip_grad_norm_`` returns), learning rate, whether
the gradient was clipped and whether the loss/norm was non-finite, in a tensor on the device; it is moved
to the host once per epoch (after one all-reduce across ranks). Per epoch every rank calls
``ray.train.report``; rank 0 attaches a checkpoint with ``model.pt`` (state dict of the unwrapped module),
``optimizer.pt``, ``history.json`` (per-epoch metrics so far) and ``steps.json`` (per-step telemetry so far).
A restarted run resumes from the latest checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gd_provider.core.training.model import build_model
from gd_provider.core.training.spec import TrainingSpec

MODEL_FILE = "model.pt"
OPTIMIZER_FILE = "optimizer.pt"
HISTORY_FILE = "history.json"
STEPS_FILE = "steps.json"
TRAIN_ARRAYS = "train.npz"
VAL_ARRAYS = "val.npz"

# Columns of the per-step telemetry buffer.
_LOSS, _GRAD_NORM, _LR, _CLIPPED, _NONFINITE, _ROWS = range(6)
STEP_KEYS = ("step", "epoch", "loss", "grad_norm", "lr", "clipped", "nonfinite")
_EVAL_CHUNK = 65536


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """Seed for one epoch on one rank: shuffling and dropout do not depend on where a run resumed."""
    return (seed * 1_000_003 + rank * 10_007 + epoch) % (2**63 - 1)


def load_arrays(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as data:
        return data["x"].astype(np.float32, copy=False), data["y"].astype(np.float32, copy=False)


def shard_rows(n: int, rank: int, world_size: int) -> np.ndarray:
    """Row indices of this rank: ``rank::world_size``, truncated to ``n // world_size`` rows on every rank."""
    per_rank = n // world_size
    return np.arange(rank, n, world_size)[:per_rank]


def make_optimizer(spec: TrainingSpec, params: Any) -> torch.optim.Optimizer:
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    raise ValueError(f"unknown optimizer {spec.optimizer!r}")


def ranking_metrics(y_true: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(ROC AUC, PR AUC = average precision); NaN when undefined (one class, non-finite scores)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    if len(y_true) == 0 or len(np.unique(y_true)) < 2 or not np.all(np.isfinite(scores)):
        return math.nan, math.nan
    return float(roc_auc_score(y_true, scores)), float(average_precision_score(y_true, scores))


@torch.no_grad()
def evaluate(
    module: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module
) -> tuple[float, float, float]:
    """(loss, ROC AUC, PR AUC) of ``module`` on ``x``/``y`` (module left in train mode afterwards)."""
    module.eval()
    try:
        logits = torch.cat([module(x[i : i + _EVAL_CHUNK]) for i in range(0, len(x), _EVAL_CHUNK)])
        loss = float(loss_fn(logits, y).item()) if len(x) else math.nan
        probs = torch.sigmoid(logits).cpu().numpy()
    finally:
        module.train()
    roc, pr = ranking_metrics(y.cpu().numpy(), probs)
    return loss, roc, pr


def _empty_steps() -> dict[str, list]:
    return {k: [] for k in STEP_KEYS}


def _finite_or_nan(values: np.ndarray, fn: Any) -> float:
    finite = values[np.isfinite(values)]
    return float(fn(finite)) if len(finite) else math.nan


def _stop_early(history: list[dict[str, Any]], patience: int | None) -> bool:
    """True when val loss has not improved for ``patience`` epochs (derived from history, so it survives resume)."""
    if not patience or not history:
        return False
    best_epoch, best = None, math.inf
    for entry in history:
        loss = entry.get("val_loss", math.nan)
        if math.isfinite(loss) and loss < best:
            best, best_epoch = loss, entry["epoch"]
    if best_epoch is None:
        return False
    return history[-1]["epoch"] - best_epoch >= patience


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    spec = TrainingSpec.from_dict(config["spec"])
    data_dir = Path(config["data_dir"])
    pos_weight = float(config["pos_weight"])

    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    seed_everything(spec.seed)

    x_train, y_train = load_arrays(data_dir / TRAIN_ARRAYS)
    x_val, y_val = load_arrays(data_dir / VAL_ARRAYS)
    rows = shard_rows(len(x_train), rank, world_size)
    if len(rows) == 0:
        raise ValueError(f"{len(x_train)} training rows cannot be split over {world_size} workers")
    xs = torch.from_numpy(np.ascontiguousarray(x_train[rows])).to(device)
    ys = torch.from_numpy(np.ascontiguousarray(y_train[rows])).to(device)
    xv = torch.from_numpy(x_val).to(device)
    yv = torch.from_numpy(y_val).to(device)
    del x_train, y_train

    # Same initial weights on every rank (DDP also broadcasts rank 0's), independent of world size.
    model = build_model(spec, int(config["input_dim"]))
    history: list[dict[str, Any]] = []
    steps = _empty_steps()
    optimizer_state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            ckpt = Path(ckpt_dir)
            model.load_state_dict(torch.load(ckpt / MODEL_FILE, map_location="cpu", weights_only=True))
            optimizer_state = torch.load(ckpt / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
            history = json.loads((ckpt / HISTORY_FILE).read_text())
            steps = json.loads((ckpt / STEPS_FILE).read_text())

    model = ray.train.torch.prepare_model(model)
    core = model.module if hasattr(model, "module") else model
    optimizer = make_optimizer(spec, model.parameters())
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight, device=device))
    clip = spec.grad_clip_norm
    max_norm = float(clip) if clip is not None else math.inf
    distributed = world_size > 1 and dist.is_available() and dist.is_initialized()

    n_rows, batch_size = len(rows), spec.batch_size
    steps_per_epoch = math.ceil(n_rows / batch_size)
    global_step = len(steps["step"])
    start_epoch = len(history)
    model.train()

    for epoch in range(start_epoch + 1, spec.epochs + 1):
        stop = _stop_early(history, spec.early_stopping_patience)
        if distributed:
            # Rank 0 decides for everyone: a rank that stops alone would hang the others' next collective.
            flag = torch.tensor([1.0 if stop else 0.0], device=device)
            dist.broadcast(flag, src=0)
            stop = bool(flag.item() > 0)
        if stop:
            break
        started = time.perf_counter()
        gen_seed = epoch_seed(spec.seed, rank, epoch)
        torch.manual_seed(gen_seed)  # dropout
        order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(gen_seed)).to(device)
        buf = torch.zeros((steps_per_epoch, 6), dtype=torch.float32, device=device)

        for i in range(steps_per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            xb, yb = xs[idx], ys[idx]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            # Returns the total norm before clipping; with max_norm=inf it only measures.
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            optimizer.step()
            loss_d = loss.detach()
            buf[i, _LOSS] = loss_d
            buf[i, _GRAD_NORM] = grad_norm.detach()
            buf[i, _LR] = optimizer.param_groups[0]["lr"]
            buf[i, _CLIPPED] = (grad_norm > max_norm).float()
            buf[i, _NONFINITE] = (~torch.isfinite(loss_d) | ~torch.isfinite(grad_norm)).float()
            buf[i, _ROWS] = len(idx)

        if distributed:
            # One collective per epoch: mean over ranks (grad norm / lr / clipped are already equal on all ranks).
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf /= world_size
        host = buf.cpu().numpy().astype(np.float64)

        loss_col, norm_col, rows_col = host[:, _LOSS], host[:, _GRAD_NORM], host[:, _ROWS]
        nonfinite = host[:, _NONFINITE] > 0
        train_loss = float(np.sum(loss_col * rows_col) / np.sum(rows_col))
        val_loss, val_roc, val_pr = evaluate(core, xv, yv, loss_fn)
        step_ids = list(range(global_step + 1, global_step + steps_per_epoch + 1))
        global_step += steps_per_epoch
        steps["step"] += step_ids
        steps["epoch"] += [epoch] * steps_per_epoch
        steps["loss"] += loss_col.tolist()
        steps["grad_norm"] += norm_col.tolist()
        steps["lr"] += host[:, _LR].tolist()
        steps["clipped"] += [int(v > 0.5) for v in host[:, _CLIPPED]]
        steps["nonfinite"] += [int(v) for v in nonfinite]

        metrics = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_roc_auc": val_roc,
            "val_pr_auc": val_pr,
            "lr": float(optimizer.param_groups[0]["lr"]),
            "steps": steps_per_epoch,
            "global_step": global_step,
            "nonfinite_steps": int(nonfinite.sum()),
            "max_grad_norm": _finite_or_nan(norm_col, np.max),
            "mean_grad_norm": _finite_or_nan(norm_col, np.mean),
            "clipped_steps": int((host[:, _CLIPPED] > 0.5).sum()),
            "epoch_seconds": time.perf_counter() - started,
            "world_size": world_size,
            "train_rows_per_worker": n_rows,
        }
        history.append(metrics)

        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                torch.save(core.state_dict(), Path(tmp) / MODEL_FILE)
                torch.save(optimizer.state_dict(), Path(tmp) / OPTIMIZER_FILE)
                (Path(tmp) / HISTORY_FILE).write_text(json.dumps(history))
                (Path(tmp) / STEPS_FILE).write_text(json.dumps(steps))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics, checkpoint=None)

    return {"epochs_run": len(history), "global_step": global_step}
