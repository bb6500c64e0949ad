"""The DAG factory: configs → DAGs, with errors that name the file and the field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from gd_provider.dag_factory import ConfigError, build_dags_from_folder, build_retraining_dag, load_config

ROOT = Path(__file__).resolve().parents[2]
FRAUD = ROOT / "dags" / "configs" / "fraud_detector.yaml"


def _config(**changes) -> dict:
    cfg = yaml.safe_load(FRAUD.read_text())
    for dotted, value in changes.items():
        node = cfg
        *path, last = dotted.split(".")
        for key in path:
            node = node[key]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return cfg


def test_fraud_config_builds_the_nightly_dag():
    dag = build_retraining_dag(FRAUD)
    assert dag.dag_id == "gd_nightly_fraud_retraining"
    assert [t.task_id for t in dag.tasks] == [
        "features_fresh", "retrieve_training_set", "validate", "drift_check", "train", "health_gate", "evaluate", "register",
        "promote", "smoke_test", "rollback", "run_report"]
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert set(dag.params) >= {"training_overrides", "drift_policy", "skip_drift_reason", "force_promotion_reason",
                               "as_of", "smoke_test_max_p95_latency_ms"}
    assert dag.task_dict["rollback"].trigger_rule == "one_failed"
    assert dag.task_dict["run_report"].trigger_rule == "all_done"
    assert dag.task_dict["validate"].upstream_task_ids == {"retrieve_training_set"}
    assert dag.task_dict["train"].upstream_task_ids >= {"drift_check"}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"training.lr": -1.0}, "training"),
        ({"model_name": None}, "model_name"),
        ({"gate.value_thresholds": {}, "gate.max_abs_regression": {}}, "gate"),
        ({"drift.policy": "ignore"}, "drift.policy"),
        ({"features.lookback_days": 0}, "features.lookback_days"),
        ({"features.partition_rows": 0}, "features.partition_rows"),
        ({"schedule": {"cron": "@daily", "assets": ["x"]}}, "schedule"),
        ({"surprise": 1}, "surprise"),
        ({"training.momentun": 0.9}, "training"),
    ],
)
def test_bad_configs_name_the_file_and_field(tmp_path, changes, field):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_config(**changes)))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and field in str(err.value)


def test_partition_rows_reach_the_retrieval_task():
    assert build_retraining_dag(FRAUD).task_dict["retrieve_training_set"].partition_rows == 1_000_000
    dag = build_retraining_dag(_config(**{"features.partition_rows": 250_000}))
    assert dag.task_dict["retrieve_training_set"].partition_rows == 250_000


def test_asset_scheduled_config():
    dag = build_retraining_dag(_config(schedule={"assets": ["feast://gd_fraud/card_stats",
                                                            "feast://gd_fraud/merchant_stats"]}))
    uris = {a.uri for a in dag.timetable.asset_condition.objects}
    assert uris == {"feast://gd_fraud/card_stats", "feast://gd_fraud/merchant_stats"}


def test_a_broken_config_does_not_break_the_others(tmp_path):
    (tmp_path / "a_good.yaml").write_text(yaml.safe_dump(_config(dag_id="good_one")))
    (tmp_path / "b_bad.yaml").write_text(yaml.safe_dump(_config(dag_id="bad_one", **{"training.epochs": 0})))
    namespace: dict = {}
    with pytest.warns(UserWarning, match="b_bad.yaml"):
        errors = build_dags_from_folder(tmp_path, namespace)
    assert list(namespace) == ["good_one"]
    assert list(errors) == [str(tmp_path / "b_bad.yaml")] and "epochs" in errors[str(tmp_path / "b_bad.yaml")]


def test_airflow_reports_the_broken_config_as_an_import_error(tmp_path):
    from airflow.dag_processing.dagbag import DagBag

    dags = tmp_path / "dags"
    (dags / "configs").mkdir(parents=True)
    for name in ("retraining_dags.py", "retraining_config_check.py"):
        shutil.copy(ROOT / "dags" / name, dags / name)
    (dags / "configs" / "good.yaml").write_text(yaml.safe_dump(_config(dag_id="good_one")))
    (dags / "configs" / "broken.yaml").write_text(yaml.safe_dump(_config(dag_id="bad_one", **{"training.lr": 0})))
    bag = DagBag(dag_folder=str(dags))
    assert set(bag.dags) == {"good_one"}
    [(path, message)] = bag.import_errors.items()
    assert path.endswith("retraining_config_check.py")
    assert "broken.yaml" in message and "training" in message and "lr" in message
