"""The three stages of a retraining DAG, each a TaskGroup builder:

    data stage       [features_fresh →] retrieve_training_set → validate → drift_check
    training stage   train → health_gate
    release stage    evaluate → register → promote → smoke_test → rollback → run_report

With its default group id a stage keeps its task ids unprefixed (``train``, ``promote``); with another it
prefixes them (``model_b_release.promote``), so several models' stages fit in one DAG."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from gd_provider.factory.config import RetrainingConfig, resolve_expectations, task_arguments
from gd_provider.factory.params import add_params, param_templates

# What the operator should do when a release task fails (the alert's ``action``).
RELEASE_ACTIONS = {
    "evaluate": "Nothing was registered or promoted; {model}@{alias} is unchanged. Fix the cause in the task log, "
                "then clear evaluate and its downstream tasks.",
    "register": "Nothing was promoted; {model}@{alias} is unchanged. Fix the cause (is the MLflow registry "
                "reachable?), then clear register and its downstream tasks: this run's version is adopted, "
                "not registered twice.",
    "promote": "{model}@{alias} may or may not have moved: check the alias and the model's audit trail in MLflow "
               "before clearing promote and its downstream tasks.",
    "approve_promotion": "Nothing was promoted; {model}@{alias} is unchanged: the approval timed out (on_timeout: "
                         "fail) or failed. Clear approve_promotion and its downstream tasks to ask again.",
    "smoke_test": "The model just promoted to {model}@{alias} failed its smoke test; the rollback task restores the "
                  "previous champion: expect a 'rolled back' alert, or a 'rollback failed' one that needs you.",
    "rollback": "{model}@{alias} may still serve the model that failed its post-promotion checks (or there is no "
                "previous champion to restore): act by hand now. Read the reason and the audit trail, then trigger "
                "the DAG gd_manual_rollback with the model, the version to restore and a reason (or move the "
                "alias in MLflow), and check what serving loads.",
}
RUN_FAILED_ACTION = ("The run_report task's log (and report.json) lists the tasks that failed; each of them sent "
                     "its own alert, and a failed release task's alert says what to do.")


def alert_callbacks(cfg: RetrainingConfig, event: str, action: str = "") -> list[Any]:
    from gd_provider.notifications import LogNotifier, WebhookNotifier

    action = action.format(model=cfg.model_name, alias=cfg.alias)
    out: list[Any] = [LogNotifier(event, action=action)]
    if cfg.alerting.webhook_conn_id:
        out.append(WebhookNotifier(cfg.alerting.webhook_conn_id, event, action=action, slack=cfg.alerting.slack))
    return out


def stage_group(group_id: str, default: str, prefix_task_ids: bool | None, tooltip: str) -> Any:
    """A stage's TaskGroup: task ids unprefixed under the default group id (the shipped DAG's ids), prefixed
    with the group id otherwise (unless ``prefix_task_ids`` says), so two models' stages fit in one DAG."""
    from airflow.sdk import TaskGroup

    prefix = group_id != default if prefix_task_ids is None else prefix_task_ids
    return TaskGroup(group_id, prefix_group_id=prefix, tooltip=tooltip)


def data_stage(cfg: RetrainingConfig, group_id: str = "data", *,
               prefix_task_ids: bool | None = None, param_prefix: str = "") -> tuple[Any, Any]:
    """[features_fresh →] retrieve_training_set → validate → drift_check.
    Returns ``(task_group, dataset XComArg)``. Task ids are prefixed with ``group_id`` when it is not the
    default (``prefix_task_ids`` overrides). Reads the Params ``as_of``, ``<param_prefix>drift_policy`` and
    ``<param_prefix>skip_drift_reason`` (added to the DAG when missing)."""
    from gd_provider.operators.drift import DriftCheckOperator
    from gd_provider.operators.features import FeastHistoricalFeaturesOperator
    from gd_provider.operators.validation import DataValidationOperator

    features = cfg.features
    params = param_templates(param_prefix)
    alerts = alert_callbacks(cfg, "gate failed")
    task = task_arguments(cfg)  # the label checks and the prediction drift are the task's
    with stage_group(group_id, "data", prefix_task_ids, "Feast → Great Expectations → Evidently") as group:
        fresh = None
        if cfg.freshness is not None:
            from gd_provider.sensors.features import FeatureFreshnessSensor

            freshness = cfg.freshness
            fresh = FeatureFreshnessSensor(
                task_id="features_fresh", feature_views=freshness.feature_views,
                feature_service=freshness.feature_service, poke_interval=freshness.poke_interval_seconds,
                timeout=freshness.timeout_minutes * 60, deferrable=freshness.deferrable,
                feast_conn_id=cfg.feast_conn_id, as_of="{{ params.as_of }}", on_failure_callback=alerts,
            )
        retrieve = FeastHistoricalFeaturesOperator(
            task_id="retrieve_training_set", label_source=features.label_source,
            feature_service=features.feature_service, features=features.features, entity_keys=features.entity_keys,
            timestamp_column=features.timestamp_column, label_column=features.label_column, sort_by=features.sort_by,
            lookback=timedelta(days=features.lookback_days), feast_conn_id=cfg.feast_conn_id,
            as_of="{{ params.as_of }}", partition_rows=features.partition_rows,
            on_failure_callback=alerts,
        )
        checks = cfg.validation
        validate = DataValidationOperator(
            task_id="validate", dataset=retrieve.output,
            expectations=resolve_expectations(checks.expectations) if checks.expectations is not None else None,
            feature_service=features.feature_service if checks.schema_checks else None,
            feast_conn_id=cfg.feast_conn_id, champion_alias=cfg.alias,
            champion_model_name=cfg.model_name if checks.champion_checks else None,
            label_column=features.label_column,
            tolerances=checks.tolerances.model_dump(exclude_unset=True) if checks.champion_checks else None,
            profile_columns=checks.profile_columns, profile_exclude=checks.profile_exclude,
            on_failure=checks.on_failure, dropped_rows=checks.dropped_rows,
            mlflow_conn_id=cfg.mlflow_conn_id, experiment_name=cfg.model_name, as_of="{{ params.as_of }}",
            on_failure_callback=alerts, **task,
        )
        drift = DriftCheckOperator(
            task_id="drift_check", dataset=retrieve.output, model_name=cfg.model_name, alias=cfg.alias,
            policy=params["drift_policy"], skip_reason=params["skip_drift_reason"],
            numeric_columns=cfg.drift.numeric_columns, categorical_columns=cfg.drift.categorical_columns,
            numeric_method=cfg.drift.numeric_method, categorical_method=cfg.drift.categorical_method,
            threshold=cfg.drift.threshold, per_column=cfg.drift.per_column, drift_share=cfg.drift.drift_share,
            sample_size=cfg.drift.sample_size, mlflow_conn_id=cfg.mlflow_conn_id, on_failure_callback=alerts, **task,
            prediction_threshold=cfg.drift.prediction_threshold, baseline=cfg.drift.baseline,
        )
        if fresh is not None:
            fresh >> retrieve
        retrieve >> validate >> drift
        extra_gates(cfg, "data", after=drift, dataset=retrieve.output, alerts=alerts)
    add_params(retrieve, cfg, param_prefix, ("as_of", "drift_policy", "skip_drift_reason"))
    return group, retrieve.output


def training_stage(cfg: RetrainingConfig, dataset: Any, group_id: str = "training", *,
                   prefix_task_ids: bool | None = None, param_prefix: str = "") -> tuple[Any, Any]:
    """train (Ray Train, guarded) → health_gate. Returns ``(task_group, training XComArg)``.
    Reads the Param ``<param_prefix>training_overrides`` and the rerun Variable of its ``train`` task
    (:func:`gd_provider.core.rerun.rerun_variable_key`)."""
    from gd_provider.core.rerun import rerun_variable_key
    from gd_provider.operators.health import TrainingHealthGate
    from gd_provider.operators.training import RayTrainOperator

    params = param_templates(param_prefix)
    alerts = alert_callbacks(cfg, "training stopped")
    with stage_group(group_id, "training", prefix_task_ids, "Ray Train + training health gate") as group:
        # A run's Params cannot change after it started: a cleared `train` reruns with the run's
        # training_overrides, updated by a rerun override for that run in the task's rerun Variable
        # (gd_rerun.<dag_id> for the nightly DAG's `train`; the DAG the task is in, and its task id when
        # prefixed, when stages are composed).
        train = RayTrainOperator(
            task_id="train", dataset=dataset, spec=cfg.training, spec_overrides=params["training_overrides"],
            model_name=cfg.model_name, ray_conn_id=cfg.ray_conn_id, mlflow_conn_id=cfg.mlflow_conn_id,
            on_failure_callback=alerts,
        )
        train.rerun_variable = rerun_variable_key(train.dag_id if train.has_dag() else cfg.dag_id, train.task_id)
        health = TrainingHealthGate(task_id="health_gate", training=train.output, thresholds=cfg.health or None,
                                    on_failure_callback=alerts)
        train >> health
        extra_gates(cfg, "training", after=health, dataset=dataset, training=train.output, alerts=alerts)
    add_params(train, cfg, param_prefix, ("training_overrides",), rerun_variable=train.rerun_variable)
    return group, train.output


def extra_gates(cfg: RetrainingConfig, stage: str, *, after: Any, dataset: Any, training: Any = None,
                alerts: list[Any]) -> list[Any]:
    """The config's ``gates`` of ``stage`` as GateOperators, chained after ``after`` in config order."""
    from gd_provider.operators.gate import GateOperator

    tasks = []
    previous = after
    for gate in (g for g in cfg.gates if g.stage == stage):
        task = GateOperator(task_id=gate.resolved_task_id, gate=gate.gate, gate_options=gate.options or None,
                            dataset=dataset, training=training, model_name=cfg.model_name, alias=cfg.alias,
                            on_failure=gate.on_failure, on_failure_callback=alerts)
        previous >> task
        previous = task
        tasks.append(task)
    return tasks


_DERIVE: Any = object()


def _drift_task_id(dataset: Any) -> str | None:
    """The drift check reading ``dataset`` (the XComArg :func:`data_stage` returns): its one
    DriftCheckOperator downstream of the retrieval task, whatever its (prefixed) id; None when there is none."""
    from gd_provider.operators.drift import DriftCheckOperator

    producer = getattr(dataset, "operator", None)
    found = [t for t in getattr(producer, "downstream_list", []) if isinstance(t, DriftCheckOperator)]
    return found[0].task_id if len(found) == 1 else None


def release_stage(cfg: RetrainingConfig, dataset: Any, training: Any, group_id: str = "release", *,
                  prefix_task_ids: bool | None = None, drift_task_id: str | None = _DERIVE,
                  param_prefix: str = "") -> Any:
    """evaluate → register → promote → smoke_test → rollback.

    ``drift_task_id``: the drift check whose report the registration records; by default the one
    :func:`data_stage` built on ``dataset`` (None: record no drift report). Reads the Params
    ``<param_prefix>force_promotion_reason`` and ``<param_prefix>smoke_test_max_p95_latency_ms``."""
    from gd_provider.operators.registry import (
        ModelEvaluationGateOperator,
        ModelSmokeTestOperator,
        PromoteModelOperator,
        RegisterModelOperator,
        RollbackModelOperator,
    )

    conn: dict[str, Any] = {"mlflow_conn_id": cfg.mlflow_conn_id}
    params = param_templates(param_prefix)
    smoke = cfg.smoke_test
    task = task_arguments(cfg)  # checked when parsed; at run time the gate and the smoke test use what was trained
    if drift_task_id is _DERIVE:
        drift_task_id = _drift_task_id(dataset)

    def alerts(task: str) -> list[Any]:
        event = {"smoke_test": "smoke test failed", "rollback": "rollback failed"}.get(task, "release failed")
        return alert_callbacks(cfg, event, RELEASE_ACTIONS[task])

    with stage_group(group_id, "release", prefix_task_ids, "gate → registry → champion → smoke test") as group:
        evaluate = ModelEvaluationGateOperator(task_id="evaluate", dataset=dataset, training=training,
                                               model_name=cfg.model_name, policy=cfg.gate, alias=cfg.alias,
                                               on_failure_callback=alerts("evaluate"), **task, **conn)
        register = RegisterModelOperator(task_id="register", dataset=dataset, training=training,
                                         gate=evaluate.output, model_name=cfg.model_name, drift_task_id=drift_task_id,
                                         on_failure_callback=alerts("register"), **conn)
        approve = None
        if cfg.approval.required:  # a person approves between registration and promotion
            from gd_provider.operators.approval import PromotionApprovalOperator

            hours = cfg.approval.timeout_hours
            approve = PromotionApprovalOperator(
                task_id="approve_promotion", model=register.output, gate=evaluate.output, alias=cfg.alias,
                force_reason=params["force_promotion_reason"], on_timeout=cfg.approval.on_timeout,
                response_timeout=timedelta(hours=hours) if hours else None, assigned_users=cfg.approval.assigned_users,
                on_failure_callback=alerts("approve_promotion"), **conn)
        promote = PromoteModelOperator(task_id="promote", model=register.output, gate=evaluate.output,
                                       alias=cfg.alias, force_reason=params["force_promotion_reason"],
                                       approval=approve.output if approve is not None else None,
                                       on_failure_callback=alerts("promote"), **conn)
        smoke_test = ModelSmokeTestOperator(
            task_id="smoke_test", dataset=dataset, model_name=cfg.model_name, alias=cfg.alias,
            canary_rows=smoke.canary_rows, max_p95_latency_ms=params["smoke_test_max_p95_latency_ms"],
            positive_rate_bounds=smoke.positive_rate_bounds,
            max_positive_rate_change=smoke.max_positive_rate_change,
            max_class_share_change=smoke.max_class_share_change, prediction_bounds=smoke.prediction_bounds,
            max_mean_shift_std=smoke.max_mean_shift_std,
            decision_threshold=cfg.gate.get("decision_threshold", 0.5),
            training=training, gate=evaluate.output, **task,  # what this run trained, and what its gate measured
            promote_task_id=promote.task_id,  # test the version this run promoted
            on_failure_callback=alerts("smoke_test"), **conn,
        )
        rollback = RollbackModelOperator(task_id="rollback", promote_task_id=promote.task_id,
                                         model_name=cfg.model_name, alias=cfg.alias,  # an interrupted promotion
                                         on_success_callback=alert_callbacks(cfg, "rolled back"),
                                         on_failure_callback=alerts("rollback"), **conn)
        evaluate >> register >> promote >> smoke_test >> rollback
        if approve is not None:
            register >> approve >> promote
    add_params(evaluate, cfg, param_prefix, ("force_promotion_reason", "smoke_test_max_p95_latency_ms"))
    return group
