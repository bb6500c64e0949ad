"""Rerun safety: clearing and rerunning every task of a finished nightly run leaves exactly one model
version for that run, one champion, one promotion in the audit trail, and no Ray left running; a cleared
run that had promoted its own model compares with the champion it replaced, and its version keeps the
decision it was promoted on."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from gd_provider.core.registry import (
    PREVIOUS_CHAMPION_TAG,
    RERUN_DECISION_TAG,
    audit_trail,
    get_alias_version,
)
from gd_provider.demo.pipeline import MODEL_NAME
from tests.harness import airflow_env

from .conftest import materialize, night

pytestmark = pytest.mark.dags
DAG_ID = "gd_nightly_fraud_retraining"
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


def _return_values(run_id: str) -> dict:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter(XComModel.dag_id == DAG_ID, XComModel.run_id == run_id,
                                               XComModel.key == "return_value").all()
        return {r.task_id: json.loads(r.value) if isinstance(r.value, str) else r.value for r in rows}


def test_clearing_a_promoted_run_compares_with_the_champion_it_replaced(demo_home, mlflow_client):
    dag = airflow_env.load_dag(DAG_ID)
    if get_alias_version(mlflow_client, MODEL_NAME, "champion") is None:  # run alone: night 1 makes one
        materialize(night(1))
        assert airflow_env.run_dag(dag, night(1), QUICK)["state"] == "success"
    previous = get_alias_version(mlflow_client, MODEL_NAME, "champion")
    materialize(night(2))
    # promoted whatever the gate says, so the rerun below always starts from "this run's model is champion"
    conf = {**QUICK, "drift_policy": "warn", "force_promotion_reason": "reliability test: night 2 must be champion"}
    run_after = datetime(2026, 11, 2, 2, 0, tzinfo=UTC)
    first = airflow_env.run_dag(dag, night(2), conf, run_after=run_after)
    assert first["state"] == "success" and first["tasks"]["smoke_test"] == "success", first
    mine = get_alias_version(mlflow_client, MODEL_NAME, "champion")
    assert mine != previous
    tags = dict(mlflow_client.get_model_version(MODEL_NAME, mine).tags)
    assert tags["gd.gate.baseline_version"] == previous and tags[PREVIOUS_CHAMPION_TAG] == previous
    versions = sorted(str(v.version) for v in mlflow_client.search_model_versions(f"name = '{MODEL_NAME}'"))
    trail = audit_trail(mlflow_client, MODEL_NAME)

    # "Clear" on the whole finished run: every check runs again while the champion is the run's own model
    again = airflow_env.run_dag(dag, night(2), conf, run_after=run_after)
    assert again["run_id"] == first["run_id"] and again["state"] == "success", again
    out = _return_values(again["run_id"])
    assert out["evaluate"]["champion_version"] == previous  # not the challenger compared with itself
    assert out["drift_check"]["champion_version"] == previous  # not this run's data as its own reference
    assert out["validate"]["champion_checks"]["version"] == previous
    assert out["register"]["version"] == mine and out["register"]["created"] is False
    assert out["promote"]["moved"] is False and out["smoke_test"]["version"] == mine
    after = dict(mlflow_client.get_model_version(MODEL_NAME, mine).tags)
    # the version keeps the decision it was promoted on; a retrained artifact that scored differently on the
    # rerun is only noted beside it - and it was compared with the same baseline
    note = after.pop(RERUN_DECISION_TAG, None)
    assert after == tags
    assert note is None or "gd.gate.baseline_version" not in json.loads(note)["tags"], note
    assert sorted(str(v.version) for v in mlflow_client.search_model_versions(f"name = '{MODEL_NAME}'")) == versions
    assert get_alias_version(mlflow_client, MODEL_NAME, "champion") == mine
    assert audit_trail(mlflow_client, MODEL_NAME) == trail
