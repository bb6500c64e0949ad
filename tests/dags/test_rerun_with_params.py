""""Clear `train` and everything downstream, rerun with new settings", end to end on the real frameworks.

Airflow 3.3 cannot change a run's conf when clearing, so the new settings come from a rerun override in
the Variable ``gd_rerun.<dag_id>`` (gd_provider.core.rerun). Night 2 is triggered with a learning rate
that makes training diverge: nothing is registered and the champion stays. The engineer writes the
override for that run and clears ``train`` with *Downstream* through the endpoint function the UI's Clear
dialog calls; the run resumes: retrieval, validation and the drift check are not executed again (same
try numbers, XComs and dataset file untouched), ``train`` reruns with the new learning rate, exactly one
new version is registered with the override in its lineage and, promoted (forced with a reason where the
gate rejects it), in the audit trail.
Clearing ``register`` and downstream afterwards registers nothing more.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from gd_provider.core.registry import FINGERPRINT_TAG, audit_trail, get_alias_version
from gd_provider.core.rerun import rerun_variable_key
from gd_provider.demo.pipeline import MODEL_NAME
from tests.harness import airflow_env

from .conftest import materialize, night

pytestmark = pytest.mark.dags
DAG_ID = "gd_nightly_fraud_retraining"
QUICK = {"epochs": 2, "num_workers": 1, "cpus_per_worker": 1.0}
BAD_LR = 50.0
GOOD_LR = 0.003
FORCE_REASON = "rerun lineage check"
UPSTREAM = ("features_fresh", "retrieve_training_set", "validate", "drift_check")
DOWNSTREAM_OF_TRAIN = ["evaluate", "health_gate", "promote", "register", "rollback", "run_report", "smoke_test", "train"]


def _versions(client) -> list:
    return sorted(client.search_model_versions(f"name = '{MODEL_NAME}'"), key=lambda v: int(v.version))


def _xcoms(run_id: str) -> dict[str, tuple]:
    """Return values of the run's tasks as stored: (value, timestamp) per task id."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter(XComModel.dag_id == DAG_ID, XComModel.run_id == run_id,
                                               XComModel.key == "return_value").all()
        return {row.task_id: (json.dumps(row.value, sort_keys=True, default=str), row.timestamp) for row in rows}


def _training_runs(client, run_key: str) -> list:
    exp = client.get_experiment_by_name(MODEL_NAME)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`gd.run_key` = '{run_key}' "
                              "and tags.`gd.run_kind` = 'training'")
    return sorted(runs, key=lambda r: r.info.start_time)


def test_clear_train_and_downstream_reruns_with_new_settings(demo_home, mlflow_client):
    from airflow.models.dagrun import DagRun
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session

    dag = airflow_env.load_dag(DAG_ID)
    materialize(night(1))
    run1 = airflow_env.run_dag(dag, night(1), {"training_overrides": QUICK})
    assert run1["state"] == "success", run1
    assert get_alias_version(mlflow_client, MODEL_NAME, "champion") == "1"

    # night 2 with a learning rate far too high: the guards stop training, nothing is registered
    materialize(night(2))
    # promotion forced (with a reason), so that the rerun's model is promoted whatever the gate says and its
    # audit entry can be checked
    run2 = airflow_env.run_dag(dag, night(2), {"training_overrides": {**QUICK, "lr": BAD_LR},
                                               "force_promotion_reason": FORCE_REASON})
    run_id = run2["run_id"]
    assert run2["state"] == "failed", run2
    assert {t: run2["tasks"][t] for t in UPSTREAM} == dict.fromkeys(UPSTREAM, "success")
    assert run2["tasks"]["train"] == "failed", run2
    assert {t: run2["tasks"][t] for t in ("health_gate", "evaluate", "register", "promote", "smoke_test")} == dict.fromkeys(
        ("health_gate", "evaluate", "register", "promote", "smoke_test"), "upstream_failed")
    assert [str(v.version) for v in _versions(mlflow_client)] == ["1"]
    assert get_alias_version(mlflow_client, MODEL_NAME, "champion") == "1"
    (diverged,) = _training_runs(mlflow_client, f"{DAG_ID}/{run_id}")
    assert diverged.data.tags["gd.health.status"] == "diverged" and float(diverged.data.params["spec.lr"]) == BAD_LR

    upstream_before = {t: v for t, v in _xcoms(run_id).items() if t in UPSTREAM}
    assert set(upstream_before) == set(UPSTREAM)
    dataset_uri = json.loads(upstream_before["retrieve_training_set"][0])["uri"]
    dataset = Path(dataset_uri)
    dataset_state = (dataset.stat().st_mtime_ns, hashlib.sha256(dataset.read_bytes()).hexdigest())

    # the fix: a rerun override for this run, then Clear train with Downstream (as in the UI)
    key = rerun_variable_key(DAG_ID)
    override = {"run_id": run_id, "training_overrides": {"lr": GOOD_LR},
                "reason": f"diverged at lr={BAD_LR}; back to the configured lr", "requested_by": "alice"}
    Variable.set(key, override, serialize_json=True)
    try:
        cleared = airflow_env.clear_tasks(DAG_ID, run_id, ["train"], include_downstream=True,
                                          note=f"retrain with lr={GOOD_LR}", user="alice")
        assert cleared == DOWNSTREAM_OF_TRAIN
        with create_session() as session:
            dr = session.query(DagRun).filter(DagRun.dag_id == DAG_ID, DagRun.run_id == run_id).one()
            assert str(dr.state) == "queued"
            assert dr.conf["training_overrides"]["lr"] == BAD_LR  # the run's Params are what they were
        rerun = airflow_env.resume_run(dag, run_id)
    finally:
        Variable.delete(key)

    assert rerun["state"] == "success", rerun
    assert rerun["run_id"] == run_id
    # upstream reused: not executed again, outputs untouched
    assert {t: rerun["tries"][t] for t in UPSTREAM} == {t: run2["tries"][t] for t in UPSTREAM} == dict.fromkeys(UPSTREAM, 1)
    assert {t: v for t, v in _xcoms(run_id).items() if t in UPSTREAM} == upstream_before
    assert (dataset.stat().st_mtime_ns, hashlib.sha256(dataset.read_bytes()).hexdigest()) == dataset_state
    assert rerun["tries"]["train"] == 2 and rerun["tasks"]["health_gate"] == "success"

    # train reran with the new learning rate, the override recorded on the MLflow run
    old, new = _training_runs(mlflow_client, f"{DAG_ID}/{run_id}")
    assert old.info.run_id == diverged.info.run_id
    assert float(new.data.params["spec.lr"]) == GOOD_LR and new.data.params["spec.epochs"] == "2"
    assert new.data.tags["gd.rerun.variable"] == key and new.data.tags["gd.rerun.requested_by"] == "alice"
    assert json.loads(new.data.tags["gd.rerun.training_overrides"]) == {"lr": GOOD_LR}

    # exactly one new version, for this run and this training, with the override in its lineage
    versions = _versions(mlflow_client)
    assert [str(v.version) for v in versions] == ["1", "2"]
    v2 = versions[1]
    tags = v2.tags
    assert tags["gd.airflow_run_id"] == run_id and v2.run_id == new.info.run_id == tags["gd.training_run_id"]
    assert json.loads(tags["gd.training_overrides"]) == {**QUICK, "lr": GOOD_LR}
    assert json.loads(tags["gd.rerun.param_overrides"]) == {**QUICK, "lr": BAD_LR}
    assert tags["gd.rerun.mechanism"] == "airflow_variable" and tags["gd.rerun.variable"] == key
    assert tags["gd.rerun.reason"] == override["reason"] and tags["gd.rerun.requested_by"] == "alice"
    assert len(tags[FINGERPRINT_TAG]) == 64
    assert tags["gd.dataset_sha256"] == json.loads(upstream_before["retrieve_training_set"][0])["sha256"]

    trail = audit_trail(mlflow_client, MODEL_NAME)
    assert rerun["tasks"]["promote"] == "success" and rerun["tasks"]["smoke_test"] == "success"
    assert get_alias_version(mlflow_client, MODEL_NAME, "champion") == "2"
    assert [(e["action"], e["to"]) for e in trail] == [("promote", "1"), ("promote", "2")]
    assert trail[1]["dag_run"] == f"{DAG_ID}/{run_id}"
    assert trail[1]["training_overrides"] == {**QUICK, "lr": GOOD_LR}
    assert trail[1]["rerun"]["training_overrides"] == {"lr": GOOD_LR}
    assert trail[1]["rerun"]["reason"] == override["reason"]
    # forced only where the gate rejected: then the version says so
    assert (tags.get("gd.forced_promotion_reason") == FORCE_REASON) is (tags["gd.blessed"] == "false")
    champion = get_alias_version(mlflow_client, MODEL_NAME, "champion")

    # clearing register and downstream again registers nothing more and moves nothing
    assert airflow_env.clear_tasks(DAG_ID, run_id, ["register"], include_downstream=True) == [
        "promote", "register", "rollback", "run_report", "smoke_test"]
    again = airflow_env.resume_run(dag, run_id)
    assert again["state"] == "success", again
    assert again["tries"]["register"] == 2 and again["tries"]["train"] == 2 and again["tries"]["evaluate"] == 1
    assert json.loads(_xcoms(run_id)["register"][0])["created"] is False
    assert [str(v.version) for v in _versions(mlflow_client)] == ["1", "2"]
    assert get_alias_version(mlflow_client, MODEL_NAME, "champion") == champion
    assert audit_trail(mlflow_client, MODEL_NAME) == trail
