"""The deployable materialization and manual-rollback DAGs are driven by the retraining configs."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from gd_provider.config_dags import build_manual_rollback_dag, build_materialization_dag, materialization_plan

CONFIGS = Path(__file__).resolve().parents[2] / "dags" / "configs"


def _second_config(folder: Path, **changes) -> None:
    data = yaml.safe_load((CONFIGS / "fraud_detector.yaml").read_text())
    data.update(dag_id="gd_nightly_second", model_name="second_model", feast_conn_id="feast_other", **changes)
    (folder / "second.yaml").write_text(yaml.safe_dump(data))


def test_the_shipped_materialization_dag_materializes_the_fraud_configs_views():
    dag = build_materialization_dag(CONFIGS)
    assert [(t.task_id, t.feature_views, t.feast_conn_id) for t in dag.tasks] == [
        ("materialize", ["card_stats", "merchant_stats"], "feast_default")]


def test_a_new_config_brings_its_views_and_model(tmp_path):
    shutil.copy(CONFIGS / "fraud_detector.yaml", tmp_path)
    _second_config(tmp_path, freshness=None)  # no named views: its feature service is materialized
    (tmp_path / "broken.yaml").write_text("dag_id: [not, valid]\n")  # left out, reported elsewhere
    dag = build_materialization_dag(tmp_path)
    tasks = {t.task_id: t for t in dag.tasks}
    assert set(tasks) == {"materialize", "materialize_feast_other_fraud_model_v1"}
    other = tasks["materialize_feast_other_fraud_model_v1"]
    assert other.feast_conn_id == "feast_other" and other.feature_service == "fraud_model_v1"
    assert other.feature_views is None

    rollback = build_manual_rollback_dag(tmp_path)
    param = rollback.params.get_param("model_name")
    assert param.value == "fraud_detector"
    assert param.schema["examples"] == ["fraud_detector", "second_model"]
    assert "second_model@champion (gd_nightly_second)" in param.description


def test_views_of_configs_on_one_connection_are_merged_once():
    class Cfg:
        def __init__(self, name, views):
            self.model_name, self.feast_conn_id = name, "feast_default"
            self.freshness = type("F", (), {"feature_views": views})()
            self.features = type("S", (), {"feature_service": None})()

    plan = materialization_plan([Cfg("a", ["v1", "v2"]), Cfg("b", ["v2", "v3"])])
    assert plan == [{"task_id": "materialize", "feast_conn_id": "feast_default",
                     "feature_views": ["v1", "v2", "v3"], "models": ["a", "b"]}]


def test_rollback_form_validates_with_defaults_but_the_reason(tmp_path):
    """Airflow's own Param validation, as the trigger form runs it: the reason is the one required field."""
    import pytest
    from airflow.sdk.definitions.param import ParamsDict

    dag = build_manual_rollback_dag(CONFIGS)
    params = ParamsDict(dag.params)
    with pytest.raises(Exception, match="reason"):
        params.validate()
    ok = ParamsDict(dag.params)
    ok["reason"] = "v3 drifts in production"
    resolved = ok.validate()
    assert resolved["model_name"] == "fraud_detector" and resolved["to_version"] == "previous"
    free = ParamsDict(dag.params)  # a model outside the configs can still be typed in
    free.update({"reason": "a composed DAG's model", "model_name": "fraud_mlp_example"})
    assert free.validate()["model_name"] == "fraud_mlp_example"
