"""Small helpers shared by the operators: where a run's files go, who acted, lineage keys."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gd_provider import settings


def safe_name(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", value).strip("_") or "run"


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


def resolve_home_path(path: str) -> Path:
    """Relative paths are relative to the project home, so DAGs stay portable between setups."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else settings.project_home() / p


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
