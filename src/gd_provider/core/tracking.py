"""MLflow runs for the pipeline's checks (drift, evaluation): one run per (DAG run, check), reused on retry."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

RUN_KEY_TAG = "gd.run_key"
KIND_TAG = "gd.kind"


def log_check_run(
    client,
    experiment_id: str,
    *,
    run_key: str,
    kind: str,
    metrics: dict[str, float],
    tags: dict[str, Any] | None = None,
    artifacts: Iterable[str] = (),
) -> str:
    """Log a check's numbers and report files into an MLflow run; returns its run id.

    A retry of the same check in the same DAG run finds and updates its run instead of adding another.
    """
    from mlflow.entities import Metric, RunTag

    escaped = run_key.replace("'", "\\'")
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{escaped}' and tags.`{KIND_TAG}` = '{kind}'",
        max_results=1,
    )
    if found:
        run_id = found[0].info.run_id
    else:
        run = client.create_run(experiment_id, run_name=f"{kind}:{run_key}",
                                tags={RUN_KEY_TAG: run_key, KIND_TAG: kind})
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
