"""Small helpers shared by the operators: where a run's files go, who acted, lineage keys."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gd_provider import settings


def safe_name(value: str) -> str:
    # no path separators, and no leading dots: "." / ".." must never become a path component
    return re.sub(r"[^A-Za-z0-9._-]+", "_", value).lstrip("._").rstrip("_") or "run"


def run_key(context: Any) -> str:
    dag_run = context["dag_run"]
    return f"{dag_run.dag_id}/{dag_run.run_id}"


def run_dir(context: Any, *parts: str) -> Path:
    """``<home>/runs/<dag_id>/<run_id>/...``: every output of a DAG run is keyed by that run."""
    dag_run = context["dag_run"]
    path = settings.project_home() / "runs" / safe_name(dag_run.dag_id) / safe_name(dag_run.run_id)
    path = path.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def task_key(context: Any, task_id: str) -> str:
    """``task_id``, plus ``[<map index>]`` for a mapped task instance: unique within a DAG run."""
    ti = context.get("ti") if hasattr(context, "get") else None
    map_index = getattr(ti, "map_index", -1)
    return f"{task_id}[{map_index}]" if isinstance(map_index, int) and map_index >= 0 else task_id


def task_dir(context: Any, task_id: str, *parts: str) -> Path:
    """``<run dir>/<task_id>[.<map index>]/...``: where one task writes its files.

    Keyed by task as well as run, so two retrieval, validation or drift tasks in one DAG (two models, a
    mapped task, a check of raw data and of the training set) never overwrite each other's outputs.
    """
    folder = safe_name(task_key(context, task_id).replace("[", ".").replace("]", ""))
    return run_dir(context, folder, *parts)


class StoragePathError(ValueError):
    """A path from a Param, a config or a DAG argument points outside the configured storage root."""


def resolve_home_path(path: str, *, root: Path | None = None) -> Path:
    """Resolve a data path against the project home (the storage root) and refuse to leave it.

    Relative paths are relative to the root, so DAGs stay portable between setups. ``..`` escapes,
    absolute paths elsewhere and URI schemes are refused with a clear error: paths can come from
    trigger-time Params, and a Param must not make a task read or write outside the storage root.
    """
    raw = str(path)
    if "://" in raw or raw.startswith("file:"):
        raise StoragePathError(f"path {raw!r}: URI schemes are not accepted here; give a path under the storage root")
    base = (root or settings.project_home()).resolve()
    p = Path(raw).expanduser()
    resolved = (p if p.is_absolute() else base / p).resolve()
    if resolved != base and base not in resolved.parents:
        raise StoragePathError(f"path {raw!r} resolves to {resolved}, outside the storage root {base}")
    return resolved


def actor(context: Any) -> str:
    dag_run = context["dag_run"]
    user = getattr(dag_run, "triggering_user_name", None)
    run_type = str(getattr(dag_run, "run_type", ""))
    if "scheduled" in run_type.lower() or not user:
        return "scheduler"
    return user


def interval(context: Any) -> tuple[Any, Any]:
    dag_run = context["dag_run"]
    end = dag_run.data_interval_end or dag_run.logical_date or dag_run.run_after
    start = dag_run.data_interval_start or end
    return start, end


def load_pyfunc(model_uri: str) -> Any:
    """``mlflow.pyfunc.load_model`` without MLflow's pip-requirements check: it compares the model's
    requirements with every installed distribution (~5 s CPU on the first load in a process) only to log
    warnings; our models are trained by this package and record its version in their lineage tags."""
    import mlflow

    return mlflow.pyfunc.load_model(model_uri, suppress_warnings=True)
