"""Every example DAG runs as a test."""

from __future__ import annotations

import pytest

from gd_provider.core.registry import audit_trail, get_alias_version
from gd_provider.demo import airflow_env

from .conftest import night

pytestmark = pytest.mark.dags


def test_features_to_training_example(demo_home, mlflow_client):
    dag = airflow_env.load_dag("gd_example_features_to_training")
    run = airflow_env.run_dag(dag, night(1))
    assert run["state"] == "success", run
    assert set(run["tasks"].values()) == {"success"}
    exp = mlflow_client.get_experiment_by_name("fraud_detector_sandbox")
    runs = mlflow_client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].data.metrics["val_roc_auc"] > 0.7
    assert mlflow_client.search_registered_models() == []  # nothing registered by this example


def test_promotion_with_rollback_example(demo_home, mlflow_client):
    name = "fraud_detector_rollback_example"
    dag = airflow_env.load_dag("gd_example_promotion_with_rollback")
    first = airflow_env.run_dag(dag, night(1))
    assert first["state"] == "success", first
    assert get_alias_version(mlflow_client, name, "champion") == "1"

    # the second model is promoted, fails its smoke test (impossible latency budget) and is rolled back
    second = airflow_env.run_dag(dag, night(2), {"smoke_test_max_p95_latency_ms": 0.0001})
    assert second["state"] == "failed"
    assert second["tasks"]["promote"] == "success"
    assert second["tasks"]["smoke_test"] == "failed"
    assert second["tasks"]["rollback"] == "success"
    assert get_alias_version(mlflow_client, name, "champion") == "1"
    trail = [(e["action"], e["from"], e["to"]) for e in audit_trail(mlflow_client, name)]
    assert trail == [("promote", "none", "1"), ("promote", "1", "2"), ("rollback", "2", "1")]
