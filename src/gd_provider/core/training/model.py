"""The network: a small MLP (or logistic regression) producing one fraud logit per row."""

from __future__ import annotations

import torch
from torch import nn

from gd_provider.core.training.spec import SpecError, TrainingSpec


def build_model(spec: TrainingSpec, input_dim: int) -> nn.Module:
    """``mlp``: Linear/ReLU/Dropout per hidden size, then Linear(…, 1); ``logistic``: a single Linear.

    The module maps ``(N, input_dim)`` float32 to ``(N,)`` logits.
    """
    if input_dim < 1:
        raise ValueError(f"input_dim must be >= 1, got {input_dim}")
    if spec.model == "logistic":
        body: nn.Module = nn.Linear(input_dim, 1)
    elif spec.model == "mlp":
        layers: list[nn.Module] = []
        width = input_dim
        for hidden in spec.hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            if spec.dropout > 0:
                layers.append(nn.Dropout(spec.dropout))
            width = hidden
        layers.append(nn.Linear(width, 1))
        body = nn.Sequential(*layers)
    else:
        raise SpecError("model", f"unknown model {spec.model!r}")
    return LogitModel(body)


class LogitModel(nn.Module):
    """Wraps a body ending in one output unit and squeezes it to a 1-D logit vector."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).squeeze(-1)
