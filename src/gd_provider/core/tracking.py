"""MLflow tracking helpers (no Airflow):

* ``log_check_run``: MLflow runs for the pipeline's checks (drift, evaluation), one run per (DAG run,
  check), reused on retry;
* ``log_dataset_input``: a dataset manifest as an MLflow dataset input of a run - metadata only (source
  URI, digest, schema, profile); the data is neither uploaded nor read.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Any

RUN_KEY_TAG = "gd.run_key"
KIND_TAG = "gd.kind"
TASK_TAG = "gd.task"
DATASET_SHA256_TAG = "gd.dataset.sha256"
DATASET_ROWS_TAG = "gd.dataset.rows"
DATASET_PARTS_TAG = "gd.dataset.parts"
MLFLOW_DIGEST_CHARS = 36  # MLflow's limit for a dataset digest (MAX_DATASET_DIGEST_SIZE)

# pandas dtype (as a manifest records it) -> MLflow DataType name
_MLFLOW_TYPES = {
    "int8": "integer",
    "int16": "integer",
    "int32": "integer",
    "uint8": "integer",
    "uint16": "integer",
    "Int8": "integer",
    "Int16": "integer",
    "Int32": "integer",
    "int64": "long",
    "uint32": "long",
    "Int64": "long",
    "float32": "float",
    "Float32": "float",
    "float64": "double",
    "Float64": "double",
    "bool": "boolean",
    "boolean": "boolean",
    "object": "string",
    "string": "string",
    "str": "string",
    "category": "string",
    "bytes": "binary",
}


def log_check_run(
    client,
    experiment_id: str,
    *,
    run_key: str,
    kind: str,
    metrics: dict[str, float],
    tags: dict[str, Any] | None = None,
    artifacts: Iterable[str] = (),
    task: str = "",
) -> str:
    """Log a check's numbers and report files into an MLflow run; returns its run id.

    A retry of the same check (same DAG run, kind and ``task``) finds and updates its run instead of adding
    another; two checks of one kind in one DAG run (different ``task``) get a run each.
    """
    from mlflow.entities import Metric, RunTag

    def quoted(value: str) -> str:
        return "'" + value.replace("'", "\\'") + "'"

    filter_string = f"tags.`{RUN_KEY_TAG}` = {quoted(run_key)} and tags.`{KIND_TAG}` = {quoted(kind)}"
    if task:
        filter_string += f" and tags.`{TASK_TAG}` = {quoted(task)}"
    found = client.search_runs([experiment_id], filter_string=filter_string, max_results=1)
    if found:
        run_id = found[0].info.run_id
    else:
        identity = {RUN_KEY_TAG: run_key, KIND_TAG: kind, **({TASK_TAG: task} if task else {})}
        name = f"{kind}:{run_key}" + (f":{task}" if task else "")
        run = client.create_run(experiment_id, run_name=name, tags=identity)
        run_id = run.info.run_id
    import time

    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None],
        tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
    )
    for path in artifacts:
        client.log_artifact(run_id, path)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _mlflow_type(dtype: str) -> str | None:
    if dtype in _MLFLOW_TYPES:
        return _MLFLOW_TYPES[dtype]
    if dtype.startswith("datetime64"):
        return "datetime"
    if dtype.startswith("string"):  # string[python], string[pyarrow]
        return "string"
    return None


def dataset_input_entity(manifest: Any, *, name: str | None = None) -> Any:
    """The ``mlflow.entities.Dataset`` describing a dataset manifest (no data read).

    ``source`` is the manifest's URI, ``digest`` the first 36 hex characters of its sha256 (MLflow's
    limit; the full sha256 is in the profile), ``schema`` MLflow column specs of the columns whose pandas
    dtype MLflow can express (the profile keeps every column's dtype), ``profile`` rows, columns,
    partitioning, keys, time ranges and feature refs. ``name`` defaults to the file name without suffix.
    """
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.entities import Dataset

    data = manifest.to_dict() if hasattr(manifest, "to_dict") else manifest
    if not isinstance(data, dict):
        raise ValueError(f"dataset manifest must be a mapping, got {type(manifest).__name__}")
    missing = [k for k in ("uri", "sha256", "rows") if not data.get(k) and data.get(k) != 0]
    if missing:
        raise ValueError(f"dataset manifest lacks {missing} (has {sorted(data)})")
    uri, sha256 = str(data["uri"]), str(data["sha256"])
    if len(sha256) < 16:
        raise ValueError(f"dataset manifest sha256 {sha256!r} is not a sha256 digest")
    try:
        with warnings.catch_warnings():  # a local path matches the local source type twice: harmless
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            source = resolve_dataset_source(uri)
    except Exception as exc:  # MlflowException when no source type accepts the URI
        raise ValueError(f"MLflow has no dataset source type for the URI {uri!r}: {exc}") from exc

    columns = {str(k): str(v) for k, v in (data.get("columns") or {}).items()}
    # keys, timestamp and label are never null in a training set; features may be (no value in the TTL)
    required = {*(data.get("entity_keys") or []), data.get("timestamp_column"), data.get("label_column")}
    colspecs = [
        {"type": t, "name": c, "required": c in required}
        for c, d in columns.items()
        if (t := _mlflow_type(d)) is not None
    ]
    partitions = data.get("partitions") or None
    profile = {
        "num_rows": int(data["rows"]),
        "num_elements": int(data["rows"]) * len(columns),
        "sha256": sha256,
        "columns": columns,
        "partitions": (
            {"parts": partitions.get("parts"), "rows_per_part": partitions.get("rows_per_part")}
            if partitions
            else None
        ),
        **{
            k: data.get(k)
            for k in (
                "entity_keys",
                "timestamp_column",
                "label_column",
                "feature_refs",
                "event_time_range",
                "data_interval",
            )
            if data.get(k) is not None
        },
    }
    return Dataset(
        name=name or PurePosixPath(uri.rstrip("/")).name.split(".", 1)[0] or "dataset",
        digest=sha256[:MLFLOW_DIGEST_CHARS],
        source_type=source._get_source_type(),
        source=source.to_json(),
        schema=json.dumps({"mlflow_colspec": colspecs}) if colspecs else None,
        profile=json.dumps(profile),
    )


def log_dataset_input(
    client,
    run_id: str,
    manifest: Any,
    *,
    context: str = "training",
    name: str | None = None,
    tags: dict[str, Any] | None = None,
) -> Any:
    """Log a dataset manifest (``DatasetManifest`` or its dict) as a dataset input of MLflow run ``run_id``.

    Input tags: ``mlflow.data.context`` = ``context``, ``gd.dataset.sha256`` (full), ``gd.dataset.rows``,
    ``gd.dataset.parts`` (partitioned datasets) and ``tags``. Logging the same dataset with the same
    context to the same run again adds nothing (MLflow keeps one input per run, name and digest).
    Returns the logged ``mlflow.entities.Dataset``.
    """
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    dataset = dataset_input_entity(manifest, name=name)
    profile = json.loads(dataset.profile)
    input_tags = {MLFLOW_DATASET_CONTEXT: context, DATASET_SHA256_TAG: profile["sha256"],
                  DATASET_ROWS_TAG: str(profile["num_rows"])}
    if profile["partitions"]:
        input_tags[DATASET_PARTS_TAG] = str(profile["partitions"]["parts"])
    input_tags.update({str(k): str(v) for k, v in (tags or {}).items()})
    client.log_inputs(
        run_id, datasets=[DatasetInput(dataset=dataset, tags=[InputTag(k, v) for k, v in input_tags.items()])]
    )
    return dataset


def drift_score_history(client: Any, experiment_id: str, *, exclude_run_key: str | None = None,
                        nights: int = 14) -> dict[str, list[float]]:
    """``{column | "prediction": [score, ...]}`` oldest first, from the last ``nights`` drift checks logged in
    ``experiment_id`` (one per DAG run: ``exclude_run_key`` leaves tonight's out, a cleared rerun included)."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{KIND_TAG}` = 'drift_check'",
                              order_by=["attributes.start_time DESC"], max_results=max(1, nights) * 2)
    picked = [r for r in runs if r.data.tags.get(RUN_KEY_TAG) != exclude_run_key][:nights]
    history: dict[str, list[float]] = {}
    for run in reversed(picked):
        for key, value in run.data.metrics.items():
            if key.startswith("drift_score."):
                history.setdefault(key.removeprefix("drift_score."), []).append(float(value))
            elif key == "prediction_drift_score":
                history.setdefault("prediction", []).append(float(value))
    return history
