"""Lineage tags written on every registered model version (plain Python, no Airflow import)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

DATASET_URI = "gd.dataset_uri"
DATASET_SHA256 = "gd.dataset_sha256"
TRAINING_FINGERPRINT = "gd.training_fingerprint"
TASK = "gd.task"
TASK_OPTIONS = "gd.task_options"
TASK_CODE_VERSION = "gd.task.code_version"
MODEL_FACTORY = "gd.model.factory"
MODEL_KWARGS = "gd.model.kwargs"
MODEL_CODE_VERSION = "gd.model.code_version"
MAX_TAG = 4000  # MLflow caps tag values; keep ours well inside


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gd-provider")
    except PackageNotFoundError:
        return "unknown"


def git_sha() -> str | None:
    """``GD_GIT_SHA`` when set (images), else the checkout's HEAD when the package runs from one."""
    if os.environ.get("GD_GIT_SHA"):
        return os.environ["GD_GIT_SHA"]
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / ".git").exists():
            try:
                out = subprocess.run(["git", "-C", str(parent), "rev-parse", "HEAD"], capture_output=True,
                                     text=True, timeout=5, check=False)
            except (OSError, subprocess.SubprocessError):
                return None
            return out.stdout.strip() or None
    return None


def training_fingerprint(dataset: dict[str, Any], training: dict[str, Any]) -> str:
    """What was trained: the dataset digest and the effective training spec (overrides applied, seed
    included). Two trainings of one DAG run with the same fingerprint are the same model; a rerun with
    other settings has another fingerprint, so registration tells them apart."""
    payload = {"dataset_sha256": dataset["sha256"], "spec": training.get("spec") or {}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def task_model_tags(training: dict[str, Any]) -> dict[str, str]:
    """What was predicted and by which code, from a training manifest or result (its ``task``: the model
    directory's ``task.json``; its ``model``: ``{"factory", "kwargs", "code_version"[, "task_code_version"]}``;
    the spec's ``task`` / ``task_options`` / ``model`` / ``model_kwargs`` where those are absent):

    ``gd.task`` (name or import path), ``gd.task_options`` (JSON), ``gd.model.factory`` (name or import path),
    ``gd.model.kwargs`` (JSON), ``gd.model.code_version`` (JSON: the factory's module, distribution version,
    source sha256) and, for a user's task class, ``gd.task.code_version``."""
    spec = training.get("spec") or {}
    task = training.get("task") or {}
    model = training.get("model") or {}
    tags: dict[str, Any] = {
        TASK: task.get("task") or spec.get("task") or "binary",
        TASK_OPTIONS: task.get("options") if "options" in task else (spec.get("task_options") or {}),
        MODEL_FACTORY: model.get("factory") or spec.get("model") or "",
        MODEL_KWARGS: model.get("kwargs") if "kwargs" in model else (spec.get("model_kwargs") or {}),
    }
    if model.get("code_version"):
        tags[MODEL_CODE_VERSION] = model["code_version"]
    if model.get("task_code_version"):
        tags[TASK_CODE_VERSION] = model["task_code_version"]
    point = (task.get("state") or {}).get("operating_point")
    if point:  # the serving decision rule chosen in training (threshold(s) or tolerance, objective, validation)
        tags[OPERATING_POINT] = {
            **{k: point[k] for k in ("threshold", "class_thresholds", "fallback_class", "tolerance") if k in point},
            "objective": point.get("objective"), "validation": point.get("validation", {}),
            **({"calibration": (point.get("calibrator") or {}).get("kind", "none")} if "threshold" in point else {}),
        }
    return {k: _clip(v) for k, v in tags.items()}


OPERATING_POINT = "gd.operating_point"


def _clip(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= MAX_TAG else text[: MAX_TAG - 1] + "…"


LOGICAL_DATE_SOURCE = "gd.logical_date_source"


def run_date(
    logical_date: str | None, run_after: str | None = None, data_interval: Any = None
) -> tuple[str, str]:
    """``(instant, source)`` recorded as ``gd.logical_date`` and ``gd.logical_date_source``: the run's logical
    date (``logical_date``); for a manual run without one (Airflow 3), when it ran (``run_after``); else the
    end of its data window (``data_interval_end``); ``("", "none")`` when there is none of them."""
    if logical_date:
        return str(logical_date), "logical_date"
    if run_after:
        return str(run_after), "run_after"
    end = data_interval[-1] if isinstance(data_interval, list | tuple) and data_interval else data_interval
    if isinstance(end, str) and end.strip():
        return end.strip(), "data_interval_end"
    return "", "none"


def lineage_tags(
    *,
    dag_id: str,
    run_id: str,
    logical_date: str | None,
    data_interval: list[str] | None,
    dataset: dict[str, Any],
    training: dict[str, Any],
    gate: dict[str, Any] | None,
    drift: dict[str, Any] | None = None,
    triggered_by: str | None = None,
    run_after: str | None = None,
) -> dict[str, str]:
    """The lineage tags of a registered version. ``gd.logical_date`` is always an ISO instant when the run has
    a date at all (see ``run_date``); ``gd.logical_date_source`` says which one it is."""
    date, date_source = run_date(logical_date, run_after, data_interval or dataset.get("data_interval"))
    tags: dict[str, Any] = {
        "gd.dag_id": dag_id,
        "gd.airflow_run_id": run_id,
        "gd.logical_date": date,
        LOGICAL_DATE_SOURCE: date_source,
        "gd.data_interval": data_interval or dataset.get("data_interval") or "",
        DATASET_URI: dataset["uri"],
        DATASET_SHA256: dataset["sha256"],
        "gd.dataset_rows": dataset["rows"],
        "gd.feature_refs": dataset.get("feature_refs", []),
        "gd.feature_service": dataset.get("feature_service") or "",
        "gd.package_version": package_version(),
        "gd.training_run_id": training["mlflow_run_id"],
        "gd.seed": training.get("spec", {}).get("seed", ""),
    }
    if triggered_by:
        tags["gd.triggered_by"] = triggered_by
    overrides = (training.get("spec_overrides") or {}) if isinstance(training, dict) else {}
    if overrides:
        tags["gd.training_overrides"] = overrides  # effective: the run's Params + a rerun override
    from gd_provider.core.rerun import rerun_tags

    tags.update(rerun_tags(training))
    tags.update(task_model_tags(training))
    tags[TRAINING_FINGERPRINT] = training_fingerprint(dataset, training)
    if drift is not None:
        tags["gd.drift.status"] = drift.get("status", "")
        if drift.get("skip_reason"):
            tags["gd.drift.skip_reason"] = drift["skip_reason"]
        if drift.get("share_drifted") is not None:
            tags["gd.drift.share_drifted"] = f"{drift['share_drifted']:.4f}"
    sha = git_sha()
    if sha:
        tags["gd.git_sha"] = sha
    for key, value in (training.get("health") or {}).items():
        tags[f"gd.health.{key}"] = value
    if gate is not None:
        tags["gd.blessed"] = str(bool(gate["blessed"])).lower()
        tags["gd.gate.reason"] = "; ".join(gate["reasons"])
        tags["gd.gate.baseline_version"] = gate.get("champion_version") or "none"
        tags["gd.gate.holdout_sha256"] = gate.get("holdout_sha256") or ""
        tags["gd.gate.holdout_rows"] = gate.get("holdout_rows", 0)
        for name, value in (gate.get("challenger_metrics") or {}).items():
            tags[f"gd.metric.{name}"] = f"{value:.6f}"
    return {k: _clip(v) for k, v in tags.items()}


class LineageError(ValueError):
    """A model version lacks the lineage tags a check needs."""


def training_dataset(client: Any, name: str, version: str) -> Any:
    """The dataset a registered version was trained on, from its lineage tags (uri + sha256): a
    ``DatasetManifest`` that ``read_dataset`` verifies against the recorded digest."""
    from gd_provider.core.data import DatasetManifest

    tags = client.get_model_version(name, version).tags
    if DATASET_URI not in tags or DATASET_SHA256 not in tags:
        raise LineageError(f"champion {name} v{version} has no {DATASET_URI}/{DATASET_SHA256} lineage tags")
    return DatasetManifest(uri=tags[DATASET_URI], sha256=tags[DATASET_SHA256], rows=0, columns={})
