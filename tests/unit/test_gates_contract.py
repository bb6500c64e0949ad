"""The gate contract (issue 15): one interface for a check, one operator that runs any of them, gates found by
name in a config. A user's gate module (``tests/dags/user_plugins/gd_user_plugins.py``) is built only from
the public API; it goes through the whole nightly DAG in tests/dags/test_user_plugins.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from gd_provider.core.data import write_dataset
from gd_provider.core.gates import GateError, GateResult, HealthGate, make_gate
from gd_provider.factory import ConfigError, build_retraining_dag, load_config
from gd_provider.operators.gate import GateOperator
from tests.support import FakeTI, fake_context

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "tests" / "dags" / "user_plugins"


@pytest.fixture(autouse=True)
def _plugins_on_path():
    sys.path.insert(0, str(PLUGINS))
    yield
    sys.path.remove(str(PLUGINS))


@pytest.fixture
def dataset(tmp_path):
    frame = pd.DataFrame({"id": range(1000), "is_fraud": [1] * 30 + [0] * 970})
    return write_dataset(frame, str(tmp_path / "d.parquet"), sort_by=["id"]).to_dict()


def test_gates_are_found_by_name_or_import_path_and_their_options_checked():
    assert isinstance(make_gate("health"), HealthGate)
    assert make_gate("gd_user_plugins:LabelShareGate", {"max_share": 0.5}).config["max_share"] == 0.5
    with pytest.raises(GateError, match=r"unknown gate 'nope'; choose one of \['health'\]"):
        make_gate("nope")
    with pytest.raises(GateError, match=r"gate 'gd_user_plugins:FocalBinaryTask': .* is not a subclass of .*Gate"):
        make_gate("gd_user_plugins:FocalBinaryTask")
    with pytest.raises(GateError, match=r"gate 'label_share': unknown option\(s\) \['max'\]"):
        make_gate("gd_user_plugins:LabelShareGate", {"max": 1})
    with pytest.raises(GateError, match="need 0 <= min_share < max_share <= 1"):
        make_gate("gd_user_plugins:LabelShareGate", {"min_share": 0.5, "max_share": 0.1})
    with pytest.raises(GateError, match="gate 'health': unknown health threshold"):
        make_gate("health", {"max_clip": 1})


def test_the_gate_operator_logs_pushes_and_fails_or_skips(dataset):
    ti = FakeTI(task_id="gate_label_share")
    ok = GateOperator(task_id="gate_label_share", gate="gd_user_plugins:LabelShareGate", dataset=dataset)
    out = ok.execute(fake_context(ti=ti))
    assert out["passed"] and out["metrics"]["share"] == pytest.approx(0.03)
    assert ti.xcom_pull("gate_label_share", key="gate") == out
    strict = GateOperator(task_id="gate_label_share", gate="gd_user_plugins:LabelShareGate", dataset=dataset,
                          gate_options={"min_share": 0.05, "max_share": 0.2})
    with pytest.raises(AirflowFailException, match=r"label_share gate failed: is_fraud share 0.0300 in \[0.05, 0.2\]: FAIL"):
        strict.execute(fake_context(ti=ti))
    pushed = ti.xcom_pull("gate_label_share", key="gate")
    assert pushed["passed"] is False  # pushed before the task failed
    strict.on_failure = "skip"
    with pytest.raises(AirflowSkipException):
        strict.execute(fake_context(ti=ti))
    # a gate that cannot judge its inputs fails the task: a check that did not run is never a pass
    blind = GateOperator(task_id="g", gate="gd_user_plugins:LabelShareGate", dataset=None)
    with pytest.raises(AirflowFailException, match="could not judge this run: this gate reads the dataset"):
        blind.execute(fake_context())
    # bad options fail when the DAG is parsed; templated ones once rendered
    with pytest.raises(ValueError, match="g: gate 'label_share': unknown option"):
        GateOperator(task_id="g", gate="gd_user_plugins:LabelShareGate", gate_options={"maximum": 1})
    GateOperator(task_id="g", gate="gd_user_plugins:LabelShareGate", gate_options={"max_share": "{{ params.x }}"})


def test_the_health_gate_is_a_gate_with_the_common_result():
    result = make_gate("health").judge(__import__("gd_provider.core.gates", fromlist=["GateInputs"]).GateInputs(
        training={"health": {"status": "diverged", "nonfinite_steps": 3, "steps": 10, "clipped_share": 0.0}}))
    assert isinstance(result, GateResult) and result.gate == "health" and not result.passed


def _config(**changes):
    cfg = yaml.safe_load((ROOT / "dags" / "configs" / "fraud_detector.yaml").read_text())
    cfg.update(changes)
    return cfg


def test_a_config_s_gates_are_wired_after_their_stage_and_checked_when_parsed(tmp_path):
    gates = [{"gate": "gd_user_plugins:LabelShareGate", "stage": "data"},
             {"gate": "gd_user_plugins:TrainLossGate", "options": {"max_train_loss": 2.0}},
             {"gate": "health", "options": {"max_restarts": 0}, "task_id": "strict_health"}]
    dag = build_retraining_dag(_config(gates=gates), auto_register=False)
    assert dag.task_dict["gate_label_share"].upstream_task_ids == {"drift_check", "retrieve_training_set"}
    assert dag.task_dict["train"].upstream_task_ids >= {"gate_label_share"}
    assert dag.task_dict["gate_train_loss"].upstream_task_ids == {"health_gate", "train", "retrieve_training_set"}
    assert dag.task_dict["strict_health"].upstream_task_ids == {"gate_train_loss", "train", "retrieve_training_set"}
    assert dag.task_dict["evaluate"].upstream_task_ids >= {"strict_health"}
    path = tmp_path / "bad.yaml"
    for bad, message in [
        ([{"gate": "gd_user_plugins:LabelShareGate", "options": {"max": 1}}], r"gates.0.*unknown option\(s\) \['max'\]"),
        ([{"gate": "health"}, {"gate": "health"}], r"gates\[1\]: task id 'gate_health' is taken by gates\[0\]"),
        ([{"gate": "no.such:Gate"}], r"gates.0.*gate 'no.such:Gate': cannot import module 'no.such'"),
    ]:
        path.write_text(yaml.safe_dump(_config(gates=bad)))
        with pytest.raises(ConfigError, match=message):
            load_config(path)
