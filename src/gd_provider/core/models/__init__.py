"""Model factories: ``(input_dim, output_dim, **kwargs) -> torch.nn.Module``, by name or import path.

Built in: ``mlp`` (``hidden_sizes``, ``dropout``) and ``logistic`` (one linear layer). A user's model is a
callable in the user's own module, named ``package.module:factory`` in ``training.model``, with its keyword
arguments in ``training.model_kwargs``. The module maps ``(N, input_dim)`` float32 to ``(N, output_dim)``
(``(N,)`` is fine for width 1). Scoring rebuilds the module from the same factory and kwargs and loads its
``state_dict``, so the factory's module must be importable wherever the model is trained or scored.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gd_provider.core.tasks import import_object

BUILTIN_MODELS = ("mlp", "logistic")


def mlp(input_dim: int, output_dim: int = 1, *, hidden_sizes: Any = (64, 32), dropout: float = 0.1) -> Any:
    """Linear/ReLU/Dropout per hidden size, then ``Linear(…, output_dim)``."""
    from torch import nn

    _check_dims(input_dim, output_dim)
    layers: list[nn.Module] = []
    width = input_dim
    for hidden in hidden_sizes:
        layers += [nn.Linear(width, int(hidden)), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = int(hidden)
    layers.append(nn.Linear(width, output_dim))
    return head(nn.Sequential(*layers))


def logistic(input_dim: int, output_dim: int = 1) -> Any:
    """One linear layer (logistic / softmax / linear regression, by the task's loss)."""
    from torch import nn

    _check_dims(input_dim, output_dim)
    return head(nn.Linear(input_dim, output_dim))


def _check_dims(input_dim: int, output_dim: int) -> None:
    if input_dim < 1:
        raise ValueError(f"input_dim must be >= 1, got {input_dim}")
    if output_dim < 1:
        raise ValueError(f"output_dim must be >= 1, got {output_dim}")


_HEAD: Any = None


def head(body: Any) -> Any:
    """``body`` wrapped so a width-1 output comes out as ``(N,)`` (the built-ins' state-dict keys
    ``body.*``; the wrapper is the former ``LogitModel``)."""
    global _HEAD
    if _HEAD is None:
        from torch import nn

        class Head(nn.Module):
            def __init__(self, body: nn.Module):
                super().__init__()
                self.body = body

            def forward(self, x: Any) -> Any:
                out = self.body(x)
                return out.squeeze(-1) if out.shape[-1] == 1 else out

        _HEAD = Head
    return _HEAD(body)


def resolve_factory(model: str) -> Callable[..., Any]:
    """The factory of a built-in name or a user's ``package.module:factory``; ``ValueError`` naming it."""
    if model == "mlp":
        return mlp
    if model == "logistic":
        return logistic
    if not isinstance(model, str) or ":" not in model:
        raise ValueError(f"unknown model {model!r}; choose one of {list(BUILTIN_MODELS)} or give a factory "
                         "by import path 'package.module:factory'")
    factory = import_object(model, "model")
    if not callable(factory):
        raise ValueError(f"model {model!r} is not callable")
    return factory


def build(model: str, input_dim: int, output_dim: int, kwargs: Mapping[str, Any] | None = None) -> Any:
    """Call the factory and check it returned an ``nn.Module``."""
    from torch import nn

    factory = resolve_factory(model)
    try:
        module = factory(input_dim, output_dim, **dict(kwargs or {}))
    except TypeError as exc:
        raise ValueError(f"model {model!r} could not be built with input_dim={input_dim}, output_dim={output_dim} "
                         f"and model_kwargs {dict(kwargs or {})}: {exc}") from exc
    if not isinstance(module, nn.Module):
        raise ValueError(f"model {model!r} returned {type(module).__name__}, not a torch.nn.Module")
    return module


def code_version(obj: Any) -> dict[str, str]:
    """Where a factory or task class comes from: its module, the distribution's version when installed,
    and the sha256 of its source file (what changes when its code does)."""
    module_name = getattr(obj, "__module__", "") or ""
    out = {"module": module_name}
    top = module_name.split(".")[0]
    try:
        dists = importlib.metadata.packages_distributions().get(top) or []
        if dists:
            out["distribution"] = f"{dists[0]}=={importlib.metadata.version(dists[0])}"
    except Exception:  # metadata of odd installs: the file digest still tells
        pass
    try:
        path = inspect.getsourcefile(sys.modules[module_name]) if module_name in sys.modules else None
    except TypeError:
        path = None
    if path and Path(path).is_file():
        out["source_sha256"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return out


def python_root(obj: Any) -> str | None:
    """The directory to put on ``sys.path`` so ``obj``'s top-level package imports (for Ray workers)."""
    module_name = getattr(obj, "__module__", "") or ""
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    if not file:
        return None
    path = Path(file).resolve()
    depth = module_name.count(".") + (1 if path.name == "__init__.py" else 0)
    return str(path.parents[depth])
