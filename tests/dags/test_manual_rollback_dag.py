"""The manual rollback DAG, as a user triggers it from the UI with a conf."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gd_provider.core import registry
from tests.harness import airflow_env

from ..support import register_scorer

pytestmark = pytest.mark.dags


def test_manual_rollback_dag(airflow_db, gd_home):
    from gd_provider.hooks.mlflow import MlflowHook

    config = MlflowHook().get_config()
    client = config.client()
    exp = registry.ensure_experiment(client, "fraud_detector", config.artifact_root)
    for i in (1, 2, 3):
        v = register_scorer(client, exp, "fraud_detector", f"d/r{i}", {})
        registry.promote(client, "fraud_detector", v, actor="scheduler", reason=f"night {i}")

    dag = airflow_env.load_dag("gd_manual_rollback")
    run = airflow_env.run_dag(dag, datetime(2026, 5, 1, tzinfo=UTC),
                              {"model_name": "fraud_detector", "to_version": "previous", "reason": "v3 drifts in prod"})
    assert run["state"] == "success", run
    assert registry.get_alias_version(client, "fraud_detector", "champion") == "2"

    run = airflow_env.run_dag(dag, datetime(2026, 5, 2, tzinfo=UTC),
                              {"model_name": "fraud_detector", "to_version": "1", "reason": "back to the known good"})
    assert run["state"] == "success", run
    assert registry.get_alias_version(client, "fraud_detector", "champion") == "1"

    # a version that does not exist fails the run and moves nothing
    run = airflow_env.run_dag(dag, datetime(2026, 5, 3, tzinfo=UTC),
                              {"model_name": "fraud_detector", "to_version": "42", "reason": "typo in version"})
    assert run["state"] == "failed"
    assert run["tasks"]["rollback"] == "failed"
    assert registry.get_alias_version(client, "fraud_detector", "champion") == "1"
    trail = registry.audit_trail(client, "fraud_detector")
    assert [(e["action"], e["from"], e["to"]) for e in trail][-2:] == [("rollback", "3", "2"), ("rollback", "2", "1")]
    assert trail[-1]["reason"] == "back to the known good"
    assert trail[-1]["dag_run"].startswith("gd_manual_rollback/")
