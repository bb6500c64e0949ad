"""The spec's network: a thin wrapper over :mod:`gd_provider.core.models` (model factories by name or path)."""

from __future__ import annotations

from torch import nn

from gd_provider.core.training.spec import TrainingSpec


def build_model(spec: TrainingSpec, input_dim: int) -> nn.Module:
    """``core.models.build(spec.model, input_dim, <the task's output width>, spec.model_kwargs_for_factory())``.

    ``mlp``: Linear/ReLU/Dropout per hidden size, then Linear(…, width); ``logistic``: a single Linear; a
    user's ``package.module:factory`` with ``model_kwargs``. A width-1 built-in maps ``(N, input_dim)`` to
    ``(N,)``.
    """
    from gd_provider.core.training.loop import build_module

    return build_module(spec, input_dim)
