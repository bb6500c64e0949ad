"""A user's own model factories and task class, as a project would keep them in its package or DAGs folder.

Named by import path in specs (``tests.unit.user_models:tiny_net``); the tests train them in-process and on
local Ray workers (which import this module through ``runner.user_python_paths``), and score the saved model
directories with ``ModelScorer`` / the MLflow pyfunc.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from gd_provider.core.tasks import BinaryTask, LabelError


class TinyNet(nn.Module):
    """Linear -> activation -> Linear, returning ``(N, output_dim)`` (also for width 1: the tasks reshape)."""

    def __init__(self, input_dim: int, output_dim: int, hidden: int, activation: str):
        super().__init__()
        self.first = nn.Linear(input_dim, hidden)
        self.act = {"relu": nn.ReLU(), "tanh": nn.Tanh()}[activation]
        self.last = nn.Linear(hidden, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.act(self.first(x)))


def tiny_net(input_dim: int, output_dim: int, *, hidden: int = 8, activation: str = "relu") -> nn.Module:
    return TinyNet(input_dim, output_dim, hidden, activation)


class DeadRelu(nn.Module):
    """Constant output 0, and no parameter ever receives a gradient (ReLU behind a large negative bias)."""

    def __init__(self, input_dim: int, hidden: int):
        super().__init__()
        self.hidden = nn.Linear(input_dim, hidden)
        self.out = nn.Linear(hidden, 1, bias=False)
        with torch.no_grad():
            self.hidden.weight.zero_()
            self.hidden.bias.fill_(-5.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x))).squeeze(-1)


def dead_relu(input_dim: int, output_dim: int = 1, *, hidden: int = 4) -> nn.Module:
    return DeadRelu(input_dim, hidden)


def not_a_module(input_dim: int, output_dim: int) -> Any:
    return "not a module"


class SignTask(BinaryTask):
    """A binary task whose labels are the strings ``"+"`` / ``"-"`` (a user's own label encoding)."""

    name = "sign"
    options: ClassVar[Mapping[str, Any]] = {"pos_weight": "auto"}

    def check_labels(self, labels: pd.Series, column: str) -> None:
        if labels.isna().any():
            raise LabelError(f"label column {column!r} has {int(labels.isna().sum())} missing value(s) (sign task)")
        bad = sorted(set(map(str, pd.unique(labels))) - {"+", "-"})
        if bad:
            raise LabelError(f"label column {column!r} must be '+' or '-' (sign task), found {bad[:5]}")

    def encode_labels(self, labels: pd.Series) -> np.ndarray:
        return (labels.astype(str) == "+").to_numpy(dtype=np.float32)


SEEN_DTYPES: list[torch.dtype] = []  # what dtype_probe's first layer put out in training mode (in-process)


def dtype_probe(input_dim: int, output_dim: int = 1) -> nn.Module:
    """A small net whose first layer records the dtype it computes in (bf16 under autocast) in SEEN_DTYPES."""
    model = nn.Sequential(nn.Linear(input_dim, 8), nn.ReLU(), nn.Linear(8, output_dim), nn.Flatten(0))
    model[0].register_forward_hook(lambda mod, inp, out: SEEN_DTYPES.append(out.dtype) if mod.training else None)
    return model
