"""Rerun safety: clearing and rerunning every task of a finished nightly run leaves exactly one model
version for that run, one champion, one promotion in the audit trail, and no Ray left running."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gd_provider.core.registry import audit_trail, get_alias_version
from gd_provider.demo import airflow_env
from gd_provider.demo.pipeline import MODEL_NAME

from .conftest import materialize, night

pytestmark = pytest.mark.dags
QUICK = {"training_overrides": {"epochs": 2, "num_workers": 1, "cpus_per_worker": 1.0}}


def _ray_processes() -> list[str]:
    import psutil

    me = psutil.Process()
    return [" ".join(p.cmdline()[:2]) for p in me.children(recursive=True)
            if any("ray" in part for part in p.cmdline()[:3])]


def test_clear_and_rerun_a_finished_run_three_times(demo_home, mlflow_client):
    dag = airflow_env.load_dag("gd_nightly_fraud_retraining")
    materialize(night(1))
    run_after = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)  # fixed: every rerun is the same DAG run id
    runs = [airflow_env.run_dag(dag, night(1), QUICK, run_after=run_after) for _ in range(4)]
    assert {r["run_id"] for r in runs} == {runs[0]["run_id"]}
    assert [r["state"] for r in runs] == ["success"] * 4, runs
    versions = mlflow_client.search_model_versions(f"name = '{MODEL_NAME}'")
    assert [str(v.version) for v in versions] == ["1"]
    assert versions[0].tags["gd.airflow_run_id"] == runs[0]["run_id"]
    assert get_alias_version(mlflow_client, MODEL_NAME, "champion") == "1"
    assert [(e["action"], e["to"]) for e in audit_trail(mlflow_client, MODEL_NAME)] == [("promote", "1")]
    import ray

    assert not ray.is_initialized()
    assert _ray_processes() == []
