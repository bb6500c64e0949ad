"""A partitioned training set through real Ray training, and the training run's MLflow dataset input."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from gd_provider.core.data import file_sha256, read_dataset, write_dataset
from gd_provider.core.training.runner import holdout_frame, init_local_ray, run_training
from gd_provider.demo import schema as S
from gd_provider.demo.schema import training_spec as demo_training_spec
from tests.integration.test_training import synthetic_transactions

pytestmark = pytest.mark.integration


def _write(df: pd.DataFrame, uri: str, partition_rows: int | None):
    return write_dataset(
        df,
        uri,
        sort_by=[S.TIMESTAMP, S.TRANSACTION_ID],
        entity_keys=list(S.ENTITY_KEYS),
        timestamp_column=S.TIMESTAMP,
        label_column=S.LABEL,
        partition_rows=partition_rows,
    )


def test_training_reads_a_partitioned_dataset_and_logs_it_as_input(tmp_path):
    import mlflow
    import ray
    from mlflow.tracking import MlflowClient

    from gd_provider.core.training.pyfunc import log_training_run

    df = synthetic_transactions(4000, seed=5)
    single = _write(df, str(tmp_path / "single" / "train.parquet"), None)
    parts = _write(df, str(tmp_path / "parts" / "train.parquet"), 1500)
    assert parts.partitions["parts"] == 3
    spec = demo_training_spec(epochs=2, seed=3)
    pd.testing.assert_frame_equal(holdout_frame(parts, spec), holdout_frame(single, spec))

    started = not ray.is_initialized()
    if started:
        init_local_ray()
    try:
        result = run_training(parts.to_dict(), spec, storage_path=str(tmp_path / "ray"), run_name="partitioned")
    finally:
        if started:
            ray.shutdown()
    assert result.status == "completed", result.error
    assert result.dataset == {"uri": parts.uri, "sha256": parts.sha256, "rows": 4000}
    assert result.split["train_rows"] + result.split["val_rows"] + result.holdout["rows"] == 4000

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        experiment_id = mlflow.create_experiment("partitioned", artifact_location=str(tmp_path / "artifacts"))
        out = log_training_run(result, spec, parts.to_dict(), experiment_id=experiment_id, run_name="train")
        client = MlflowClient()
        run = client.get_run(out["mlflow_run_id"])
        (entry,) = run.inputs.dataset_inputs
        assert entry.dataset.name == "train" and entry.dataset.digest == parts.sha256[:36]
        assert json.loads(entry.dataset.source) == {"uri": parts.uri}
        tags = {t.key: t.value for t in entry.tags}
        assert tags["mlflow.data.context"] == "training" and tags["gd.dataset.sha256"] == parts.sha256
        assert json.loads(entry.dataset.profile)["partitions"] == {"parts": 3, "rows_per_part": 1500}
        # the dataset itself was not uploaded: the run holds the model, plots and training JSON only
        top = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert top == {"plots", "training"}, top
        logged = [p for p in (tmp_path / "artifacts").rglob("*") if p.is_file()]
        dataset_digests = {f["sha256"] for f in parts.partitions["files"]} | {single.sha256}
        assert not {file_sha256(p) for p in logged} & dataset_digests
        big = [p for p in logged if p.suffix == ".parquet" and pq.read_metadata(p).num_rows > 100]
        assert big == [], big  # at most the model's small input example
    finally:
        mlflow.set_tracking_uri(None)
    assert len(read_dataset(parts)) == 4000
