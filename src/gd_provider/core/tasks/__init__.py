"""Task plug-ins: what is predicted, and everything that depends on it (see :mod:`.base`).

``get_task("binary")``, ``get_task("multiclass", {"classes": [...]})``, ``get_task("regression")`` or a
user's ``get_task("mypkg.tasks:MyTask", {...})`` (a :class:`Task` subclass named by import path).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from typing import Any

from gd_provider.core.tasks.base import LabelError, Task, TaskError
from gd_provider.core.tasks.binary import BinaryTask, classification_metrics
from gd_provider.core.tasks.multiclass import MulticlassTask
from gd_provider.core.tasks.regression import RegressionTask

BUILTIN_TASKS: dict[str, type[Task]] = {"binary": BinaryTask, "multiclass": MulticlassTask,
                                        "regression": RegressionTask}
IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

__all__ = ["BUILTIN_TASKS", "BinaryTask", "LabelError", "MulticlassTask", "RegressionTask", "Task", "TaskError",
           "classification_metrics", "get_task", "import_object", "task_class"]


def import_object(path: str, what: str) -> Any:
    """``package.module:name`` → the object; a ``ValueError`` naming ``what`` and the path otherwise."""
    if not isinstance(path, str) or not IMPORT_PATH.match(path):
        raise ValueError(f"{what} {path!r} is not an import path 'package.module:name'")
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{what} {path!r}: cannot import module {module_name!r} ({exc})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"{what} {path!r}: module {module_name!r} has no {attr!r}") from None


def task_class(name: str) -> type[Task]:
    """The class of a built-in task name or a user task's import path."""
    if name in BUILTIN_TASKS:
        return BUILTIN_TASKS[name]
    if not isinstance(name, str) or ":" not in name:
        raise TaskError(str(name), "task", f"unknown task; choose one of {list(BUILTIN_TASKS)} or give a Task "
                        "subclass by import path 'package.module:Class'")
    try:
        cls = import_object(name, "task")
    except ValueError as exc:  # "task 'a.b:C': cannot import module ...": the task is named once, by TaskError
        raise TaskError(name, "task", str(exc).split(": ", 1)[-1]) from None
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise TaskError(name, "task", f"{cls!r} is not a subclass of gd_provider.core.tasks.Task")
    return cls


def get_task(name: str = "binary", options: Mapping[str, Any] | None = None) -> Task:
    """A task instance with its options checked (raises :class:`TaskError` naming the task and the field)."""
    cls = task_class(name)
    if options is not None and not isinstance(options, Mapping):
        raise TaskError(name, "task_options", f"expected a mapping, got {type(options).__name__}")
    task = cls(**dict(options or {}))
    if name not in BUILTIN_TASKS:
        task.import_name = name  # type: ignore[attr-defined]
    return task
