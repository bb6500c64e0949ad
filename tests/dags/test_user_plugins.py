"""A user's own task class and nn.Module factory, from the user's own module next to the DAG file, go
through a whole nightly DAG: trained on Ray, gated, registered with lineage, promoted, smoke-tested and
rolled back."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from gd_provider.core.registry import audit_trail, get_alias_version
from tests.harness import airflow_env

from .conftest import materialize, night

pytestmark = pytest.mark.dags
DAG_ID = "gd_user_plugins_retraining"
MODEL = "fraud_focal_residual"
HERE = Path(__file__).resolve().parent / "user_plugins"
FILES = ("gd_user_plugins.py", "gd_user_plugin_dag.py")


@pytest.fixture(scope="module")
def user_dag(demo_home):
    """The user's module and DAG file linked into the DAGs folder, which Airflow 3 puts on ``sys.path`` (the DAG
    bundle's path, as the dag-processor and the task runner do)."""
    import sys

    folder = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    links = [folder / name for name in FILES]
    for link, name in zip(links, FILES, strict=True):
        link.unlink(missing_ok=True)
        link.symlink_to(HERE / name)
    try:
        yield airflow_env.load_dag(DAG_ID)
    finally:
        for link in links:
            link.unlink(missing_ok=True)


def _xcom(run_id: str, task_id: str) -> dict:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(XComModel).filter(XComModel.dag_id == DAG_ID, XComModel.run_id == run_id,
                                              XComModel.task_id == task_id, XComModel.key == "return_value").one()
        return row.value


def test_user_task_and_model_through_the_nightly_dag(user_dag, demo_home, mlflow_client):
    import json

    import mlflow

    from gd_provider.core.data import read_dataset

    materialize(night(1))
    run1 = airflow_env.run_dag(user_dag, night(1))
    assert run1["state"] == "success", run1
    assert run1["tasks"]["promote"] == "success" and run1["tasks"]["smoke_test"] == "success"
    assert get_alias_version(mlflow_client, MODEL, "champion") == "1"
    tags = mlflow_client.get_model_version(MODEL, "1").tags
    assert tags["gd.task"] == "gd_user_plugins:FocalBinaryTask"
    assert tags["gd.model.factory"] == "gd_user_plugins:residual_net"
    assert json.loads(tags["gd.model.kwargs"]) == {"width": 24, "blocks": 2}
    code = json.loads(tags["gd.model.code_version"])
    assert code["source_sha256"] and len(code["source_sha256"]) == 64
    assert {"roc_auc", "pr_auc", "brier"} <= set(_xcom(run1["run_id"], "evaluate")["challenger_metrics"])
    # the user's gates ran where the config put them, and report like every gate
    assert run1["tasks"]["gate_label_share"] == "success" and run1["tasks"]["gate_train_loss"] == "success"
    share = _xcom(run1["run_id"], "gate_label_share")
    assert share["gate"] == "label_share" and share["passed"] and 0.005 < share["metrics"]["share"] < 0.2
    assert _xcom(run1["run_id"], "gate_train_loss")["metrics"]["train_loss"] > 0
    assert user_dag.task_dict["gate_label_share"].upstream_task_ids == {"drift_check", "retrieve_training_set"}
    assert user_dag.task_dict["gate_train_loss"].upstream_task_ids == {"health_gate", "train", "retrieve_training_set"}

    # the registered model is the user's network, loaded and scored through MLflow like any other
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    frame = read_dataset(_xcom(run1["run_id"], "retrieve_training_set")).head(200)
    scores = np.asarray(model.predict(frame), dtype=float)
    assert scores.shape == (200,) and np.all((scores > 0) & (scores < 1)) and scores.std() > 0

    # night 2: forced past the gate, the new champion fails its smoke test and is rolled back to v1
    materialize(night(2))
    run2 = airflow_env.run_dag(user_dag, night(2), {"force_promotion_reason": "exercise the rollback",
                                                    "smoke_test_max_p95_latency_ms": 0.0001})
    assert run2["state"] == "failed"
    assert run2["tasks"]["evaluate"] == "success" and run2["tasks"]["promote"] == "success"
    assert run2["tasks"]["smoke_test"] == "failed" and run2["tasks"]["rollback"] == "success"
    assert _xcom(run2["run_id"], "evaluate")["champion_version"] == "1"  # compared with the champion on the same holdout
    assert get_alias_version(mlflow_client, MODEL, "champion") == "1"
    trail = [(e["action"], e["from"], e["to"]) for e in audit_trail(mlflow_client, MODEL)]
    assert trail == [("promote", "none", "1"), ("promote", "1", "2"), ("rollback", "2", "1")]

