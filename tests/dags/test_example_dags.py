"""Every example DAG runs as a test."""

from __future__ import annotations

import pytest

from gd_provider.core.registry import audit_trail, get_alias_version
from tests.harness import airflow_env

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


def test_two_models_example_keeps_each_models_params_to_itself(demo_home, mlflow_client):
    dag = airflow_env.load_dag("gd_example_two_models")
    run = airflow_env.run_dag(dag, night(1), {"logistic_training_overrides": {"epochs": 2}})
    assert run["state"] == "success", run
    for key in ("mlp", "logistic"):
        assert run["tasks"][f"{key}_release.promote"] == "success"
        assert run["tasks"][f"{key}_release.rollback"] == "skipped"
    assert {state for task, state in run["tasks"].items() if not task.endswith(".rollback")} == {"success"}

    # each model registered and promoted under its own name; the override changed the logistic model only
    epochs = {}
    for name in ("fraud_mlp_example", "fraud_logistic_example"):
        assert get_alias_version(mlflow_client, name, "champion") == "1"
        version = mlflow_client.get_model_version(name, "1")
        assert version.tags["gd.dag_id"] == "gd_example_two_models"
        epochs[name] = mlflow_client.get_run(version.run_id).data.params["spec.epochs"]
        overrides = version.tags.get("gd.training_overrides")
        assert (overrides is not None) == (name == "fraud_logistic_example"), (name, overrides)
    assert epochs == {"fraud_mlp_example": "4", "fraud_logistic_example": "2"}
    assert mlflow_client.get_run(
        mlflow_client.get_model_version("fraud_logistic_example", "1").run_id).data.params["spec.model"] == "logistic"
