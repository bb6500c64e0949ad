"""Checkpoint files of a training run: what rank 0 saves per epoch, and where a resumed run finds its progress."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gd_provider.core.tasks.metrics import ranking_metrics, ranking_metrics_numpy  # noqa: F401 (former home)

MODEL_FILE = "model.pt"
OPTIMIZER_FILE = "optimizer.pt"
HISTORY_FILE = "history.json"
STEPS_FILE = "steps.json"
RUN_STATE_FILE = "run_state.json"
TRAIN_ARRAYS = "train.npz"
VAL_ARRAYS = "val.npz"


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
