"""Composing the factory's stages (two models in one DAG) and the release alerts the factory attaches."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gd_provider.dag_factory import (
    build_retraining_dag,
    data_stage,
    load_config,
    release_stage,
    retraining_params,
    training_stage,
)
from gd_provider.notifications import LogNotifier, WebhookNotifier

ROOT = Path(__file__).resolve().parents[2]
FRAUD = ROOT / "dags" / "configs" / "fraud_detector.yaml"
RELEASE = ("evaluate", "register", "promote", "smoke_test", "rollback")

TWO_MODELS = '''
from datetime import UTC, datetime
from pathlib import Path

import yaml
from airflow.sdk import DAG, chain

from gd_provider.dag_factory import data_stage, load_config, release_stage, retraining_params, training_stage
from gd_provider.operators.report import RunReportOperator

raw = yaml.safe_load(Path(CONFIG).read_text())
a = load_config(raw)
b = load_config({**raw, "model_name": "fraud_detector_b", "drift": {**raw["drift"], "policy": "block"},
                 "smoke_test": {**raw.get("smoke_test", {}), "max_p95_latency_ms": 75.0}})
with DAG("two_models", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=UTC),
         render_template_as_native_obj=True) as dag:
    report = RunReportOperator(task_id="run_report")
    for key, cfg in (("a", a), ("b", b)):
        data, dataset = data_stage(cfg, group_id=f"{key}_data", param_prefix=PREFIX.format(key=key))
        training_group, training = training_stage(cfg, dataset, group_id=f"{key}_training",
                                                  param_prefix=PREFIX.format(key=key))
        release = release_stage(cfg, dataset, training, group_id=f"{key}_release", param_prefix=PREFIX.format(key=key))
        chain(data, training_group, release, report)
'''


def _two_model_dag(prefix: str = "{key}_"):
    namespace: dict = {"CONFIG": str(FRAUD), "PREFIX": prefix}
    exec(compile(TWO_MODELS, "two_models.py", "exec"), namespace)  # noqa: S102
    return namespace["dag"]


def test_two_models_compose_into_one_dag_with_distinct_ids_and_their_own_wiring():
    dag = _two_model_dag()
    ids = set(dag.task_dict)
    for key in ("a", "b"):
        assert {f"{key}_data.retrieve_training_set", f"{key}_data.validate", f"{key}_data.drift_check",
                f"{key}_data.features_fresh", f"{key}_training.train", f"{key}_training.health_gate",
                *(f"{key}_release.{name}" for name in RELEASE)} <= ids
    assert len(ids) == 2 * 11 + 1
    t = dag.task_dict
    for key, other in (("a", "b"), ("b", "a")):
        # each model's chain is wired to its own tasks only
        assert t[f"{key}_data.validate"].upstream_task_ids == {f"{key}_data.retrieve_training_set"}
        assert t[f"{key}_training.train"].upstream_task_ids == {
            f"{key}_data.drift_check", f"{key}_data.retrieve_training_set"}
        assert t[f"{key}_release.evaluate"].upstream_task_ids == {
            f"{key}_training.health_gate", f"{key}_training.train", f"{key}_data.retrieve_training_set"}
        assert t[f"{key}_release.rollback"].upstream_task_ids == {f"{key}_release.smoke_test"}
        assert not any(u.startswith(f"{other}_") for u in t[f"{key}_release.register"].upstream_task_ids)
        # cross-task references name the actual (prefixed) tasks
        assert t[f"{key}_release.register"].drift_task_id == f"{key}_data.drift_check"
        assert t[f"{key}_release.rollback"].promote_task_id == f"{key}_release.promote"
        assert t[f"{key}_release.smoke_test"].promote_task_id == f"{key}_release.promote"
        # rerun overrides are read from a Variable of the DAG the task is in (not the config's dag_id), one
        # per model's training task
        assert t[f"{key}_training.train"].rerun_variable == f"gd_rerun.two_models.{key}_training.train"
        # and each model reads its own Params
        assert t[f"{key}_training.train"].spec_overrides == f"{{{{ params.{key}_training_overrides }}}}"
        assert t[f"{key}_data.drift_check"].policy == f"{{{{ params.{key}_drift_policy }}}}"
        assert t[f"{key}_release.promote"].force_reason == f"{{{{ params.{key}_force_promotion_reason }}}}"
    assert t["b_release.register"].model_name == "fraud_detector_b"
    assert t["run_report"].upstream_task_ids == {"a_release.rollback", "b_release.rollback"}


def test_two_model_dag_file_parses_in_airflow(tmp_path):
    from airflow.dag_processing.dagbag import DagBag

    (tmp_path / "two_models.py").write_text(f"CONFIG = {str(FRAUD)!r}\nPREFIX = '{{key}}_'\n" + TWO_MODELS)
    bag = DagBag(dag_folder=str(tmp_path))
    assert bag.import_errors == {}
    dag = bag.dags["two_models"]
    assert len(dag.task_dict) == 23
    # the Params the stages added are in what the UI's trigger form and the scheduler see
    from airflow.serialization.serialized_objects import DagSerialization

    params = DagSerialization.from_dict(DagSerialization.to_dict(dag)).params
    assert {"as_of", "a_training_overrides", "b_training_overrides", "a_drift_policy", "b_drift_policy"} <= set(params)
    assert "training_overrides" not in params


def _render(dag, task_id: str, field: str, conf: dict) -> object:
    """A task's templated field as a run with ``conf`` renders it (Params merged and validated as Airflow does)."""
    from airflow.sdk.definitions.param import process_params

    task = dag.task_dict[task_id]
    params = process_params(dag, task, conf, suppress_exception=False)
    return task.render_template(getattr(task, field), {"params": params}, dag.get_template_env())


def test_each_model_of_a_composed_dag_has_its_own_params_with_its_own_defaults():
    dag = _two_model_dag()
    assert {n for n in dag.params if not n.startswith(("a_", "b_"))} == {"as_of"}  # one data window per run
    assert dag.params["a_drift_policy"] == "retrain" and dag.params["b_drift_policy"] == "block"
    assert dag.params["b_smoke_test_max_p95_latency_ms"] == 75.0
    assert "gd_rerun.two_models.b_training.train" in dag.params.get_param("b_training_overrides").description
    # an override for model b changes b's training only
    conf = {"b_training_overrides": {"lr": 0.5}, "as_of": "2026-02-01"}
    assert _render(dag, "b_training.train", "spec_overrides", conf) == {"lr": 0.5}
    assert _render(dag, "a_training.train", "spec_overrides", conf) == {}
    assert _render(dag, "a_data.drift_check", "policy", {}) == "retrain"
    assert _render(dag, "b_data.drift_check", "policy", {}) == "block"
    assert _render(dag, "b_data.retrieve_training_set", "as_of", conf) == "2026-02-01"
    assert _render(dag, "a_data.retrieve_training_set", "as_of", conf) == "2026-02-01"
    assert _render(dag, "b_release.smoke_test", "max_p95_latency_ms", {}) == 75.0


def test_two_models_sharing_params_are_refused_while_the_dag_is_built():
    from gd_provider.dag_factory import ConfigError

    with pytest.raises(ConfigError, match=r"the stages of fraud_detector_b@champion would read the Param "
                                          r"'drift_policy', which the stages of fraud_detector@champion already "
                                          r"read.*param_prefix='fraud_detector_b_'"):
        _two_model_dag(prefix="")


def test_one_model_under_two_aliases_needs_two_sets_of_params_and_the_suggested_prefix_is_usable():
    from airflow.sdk import DAG

    from gd_provider.dag_factory import ConfigError

    raw = yaml.safe_load(FRAUD.read_text())
    champion = load_config(raw)
    shadow = load_config({**raw, "model_name": "2fa-model", "alias": "shadow"})
    with DAG("aliases", schedule=None), pytest.raises(ConfigError, match="2fa-model@shadow") as info:
        data_stage(champion, group_id="c_data")
        data_stage(shadow, group_id="s_data")
    suggested = str(info.value).split("param_prefix='")[1].split("'")[0]
    with DAG("aliases_fixed", schedule=None) as dag:
        data_stage(champion, group_id="c_data")
        data_stage(shadow, group_id="s_data", param_prefix=suggested)
    assert f"{suggested}drift_policy" in dag.params


@pytest.mark.parametrize("prefix", ["b-", "1b_", "b.", "b_\n", " b_"])
def test_a_param_prefix_that_cannot_name_a_param_in_a_template_is_refused(prefix):
    from gd_provider.dag_factory import ConfigError

    with pytest.raises(ConfigError, match=r"param_prefix: .* must be empty or a Python identifier"):
        data_stage(load_config(FRAUD), param_prefix=prefix)


def test_the_shipped_dag_keeps_its_unprefixed_ids_and_references():
    dag = build_retraining_dag(FRAUD)
    assert dag.task_dict["register"].drift_task_id == "drift_check"
    assert dag.task_dict["rollback"].promote_task_id == dag.task_dict["smoke_test"].promote_task_id == "promote"
    assert dag.task_dict["train"].rerun_variable == "gd_rerun.gd_nightly_fraud_retraining"


def test_a_stage_can_be_prefixed_or_not_on_request():
    from airflow.sdk import DAG

    cfg = load_config(FRAUD)
    with DAG("prefix_choice", schedule=None, params=retraining_params(cfg)) as dag:
        data_stage(cfg, group_id="fraud", prefix_task_ids=False)
    assert "drift_check" in dag.task_dict
    with DAG("prefix_default", schedule=None, params=retraining_params(cfg)) as dag:
        _, dataset = data_stage(cfg, prefix_task_ids=True)
        _, training = training_stage(cfg, dataset, prefix_task_ids=True)
        release_stage(cfg, dataset, training, prefix_task_ids=True)
    assert "data.drift_check" in dag.task_dict and "release.promote" in dag.task_dict
    assert dag.task_dict["release.register"].drift_task_id == "data.drift_check"


def _notifiers(callbacks) -> list:
    return [c for c in (callbacks or []) if isinstance(c, (LogNotifier, WebhookNotifier))]


def test_release_tasks_and_the_run_alert_on_failure():
    dag = build_retraining_dag(FRAUD)
    for task_id in RELEASE:
        [log] = _notifiers(dag.task_dict[task_id].on_failure_callback)
        assert isinstance(log, LogNotifier) and log.action, task_id
    rollback = _notifiers(dag.task_dict["rollback"].on_failure_callback)[0]
    assert rollback.event == "rollback failed"
    assert "act by hand" in rollback.action and "gd_manual_rollback" in rollback.action
    assert "fraud_detector@champion" in rollback.action
    assert _notifiers(dag.task_dict["rollback"].on_success_callback)[0].event == "rolled back"
    assert "rollback" in _notifiers(dag.task_dict["smoke_test"].on_failure_callback)[0].action
    [run_alert] = _notifiers(dag.on_failure_callback)
    assert run_alert.event == "run failed" and "run_report" in run_alert.action


@pytest.mark.parametrize("task_id", [*RELEASE, "validate", "train"])
def test_failure_alerts_go_to_the_configured_webhook_too(task_id):
    raw = yaml.safe_load(FRAUD.read_text())
    dag = build_retraining_dag({**raw, "alerting": {"webhook_conn_id": "alerts", "slack": True}})
    notifiers = _notifiers(dag.task_dict[task_id].on_failure_callback)
    [hook] = [n for n in notifiers if isinstance(n, WebhookNotifier)]
    [log] = [n for n in notifiers if isinstance(n, LogNotifier)]
    assert hook.webhook_conn_id == "alerts" and hook.slack is True
    assert (hook.event, hook.action) == (log.event, log.action)
    assert any(isinstance(n, WebhookNotifier) for n in _notifiers(dag.on_failure_callback))

