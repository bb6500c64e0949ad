"""A user's own module, outside gd_provider: a task class and a model factory, named by import path.

It sits next to the user's DAG file (the Airflow DAGs folder is on ``sys.path``), exactly as a data engineer
would keep it. Nothing here imports gd_provider internals beyond the public ``Task`` interface.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from gd_provider.core.tasks import LabelError, Task


class FocalBinaryTask(Task):
    """Binary fraud-style labels trained with the focal loss (down-weights easy negatives)."""

    name = "focal_binary"
    losses = ("focal",)
    default_loss = "focal"
    metrics: Mapping[str, bool] = {"roc_auc": True, "pr_auc": True, "brier": False}
    validation_metrics: ClassVar[Mapping[str, bool]] = {"val_loss": False, "val_pr_auc": True}
    default_validation_metric = "val_pr_auc"
    options: ClassVar[Mapping[str, Any]] = {"gamma": 2.0, "alpha": 0.75}

    def check_labels(self, labels: pd.Series, column: str) -> None:
        super().check_labels(labels, column)
        values = set(pd.to_numeric(labels, errors="coerce").dropna().unique()) | (
            {"non-numeric"} if pd.to_numeric(labels, errors="coerce").isna().any() else set())
        if not values <= {0, 1}:
            raise LabelError(f"label column {column!r} must be 0/1 for focal_binary, found {sorted(map(str, values))}")

    def encode_labels(self, labels: pd.Series) -> np.ndarray:
        return labels.astype("float32").to_numpy()

    def holdout_problem(self, y: np.ndarray) -> str | None:
        return None if len(np.unique(y)) == 2 else "the holdout needs both classes"

    def make_loss(self, loss: str, state: Mapping[str, Any], device: Any) -> nn.Module:
        return FocalLoss(float(self.config["gamma"]), float(self.config["alpha"]))

    def scores(self, outputs: np.ndarray, state: Mapping[str, Any]) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(outputs, dtype=np.float64).reshape(len(outputs)), -700, 700)))

    def epoch_metrics(self, y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
        from sklearn.metrics import average_precision_score

        ok = len(np.unique(y)) == 2 and np.all(np.isfinite(scores))
        return {"val_pr_auc": float(average_precision_score(y, scores)) if ok else float("nan")}

    def decisions(self, scores: np.ndarray, threshold: float | None = None) -> np.ndarray:
        return (np.asarray(scores) >= (0.5 if threshold is None else threshold)).astype(np.int64)

    def gate_metrics(self, y: np.ndarray, scores: np.ndarray, threshold: float | None = None) -> dict[str, float]:
        from sklearn.metrics import average_precision_score, roc_auc_score

        p = np.asarray(scores, dtype=float)
        if not np.all(np.isfinite(p)):
            raise ValueError("non-finite scores")
        return {"roc_auc": float(roc_auc_score(y, p)), "pr_auc": float(average_precision_score(y, p)),
                "brier": float(np.mean((p - y) ** 2))}

    def smoke_problems(self, scores: np.ndarray, previous: np.ndarray | None, options: Mapping[str, Any],
                       threshold: float | None = None) -> list[str]:
        problems = super().smoke_problems(scores, previous, options)
        p = np.asarray(scores, dtype=float)
        if not problems and len(p) and (p.min() < 0 or p.max() > 1):
            problems.append("scores outside [0, 1]")
        return problems


class FocalLoss(nn.Module):
    def __init__(self, gamma: float, alpha: float):
        super().__init__()
        self.gamma, self.alpha = gamma, alpha

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = outputs.reshape(targets.shape)
        bce = nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        p_t = torch.exp(-bce)
        alpha_t = self.alpha * targets + (1 - self.alpha) * (1 - targets)
        return (alpha_t * (1 - p_t) ** self.gamma * bce).mean()


class ResidualNet(nn.Module):
    """Input projection, ``blocks`` residual MLP blocks with LayerNorm, a linear head: not our mlp."""

    def __init__(self, input_dim: int, output_dim: int, width: int, blocks: int):
        super().__init__()
        self.proj = nn.Linear(input_dim, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU()) for _ in range(blocks))
        self.out = nn.Linear(width, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)  # (N, output_dim): the task flattens a width-1 head


def residual_net(input_dim: int, output_dim: int, *, width: int = 32, blocks: int = 2) -> nn.Module:
    return ResidualNet(input_dim, output_dim, width, blocks)


# ------------------------------------------------------------------------------------------------ a gate
from gd_provider.core.gates import Gate, GateError, GateInputs, GateResult  # noqa: E402 - the public gate API


class LabelShareGate(Gate):
    """The share of positive labels in tonight's dataset stays within [min_share, max_share] (a labelling job
    that silently dropped the fraud reports, or flagged everything, stops the run before training)."""

    name = "label_share"
    options: ClassVar[Mapping[str, Any]] = {"column": "is_fraud", "min_share": 0.005, "max_share": 0.2}

    def check_options(self) -> None:
        if not 0 <= self.config["min_share"] < self.config["max_share"] <= 1:
            raise GateError(f"gate 'label_share': need 0 <= min_share < max_share <= 1, got {self.config}")

    def judge(self, inputs: GateInputs) -> GateResult:
        frame = inputs.read_dataset()
        column = self.config["column"]
        if column not in frame.columns:
            raise GateError(f"gate 'label_share': the dataset has no column {column!r}")
        share = float(frame[column].mean())
        low, high = self.config["min_share"], self.config["max_share"]
        ok = low <= share <= high
        return GateResult("label_share", ok, [f"{column} share {share:.4f} in [{low}, {high}]: {'pass' if ok else 'FAIL'}"],
                          {"share": share, "rows": len(frame)})


class TrainLossGate(Gate):
    """The chosen epoch's training loss stays under ``max_train_loss`` (reads the training manifest)."""

    name = "train_loss"
    options: ClassVar[Mapping[str, Any]] = {"max_train_loss": 1.0}

    def judge(self, inputs: GateInputs) -> GateResult:
        loss = ((inputs.training or {}).get("metrics") or {}).get("train_loss")
        if loss is None:
            raise GateError("gate 'train_loss': the training manifest has no train_loss metric")
        ok = loss <= self.config["max_train_loss"]
        return GateResult("train_loss", ok, [f"train_loss {loss:.4f} <= {self.config['max_train_loss']}: "
                                             f"{'pass' if ok else 'FAIL'}"], {"train_loss": loss})
