"""Nightly retraining of the fraud model: Feast → Great Expectations → Evidently → Ray Train → health gate →
evaluation gate → MLflow registry → promotion → smoke test → rollback.

Every gate stops a bad model from shipping: invalid data fails ``validate``; drift follows the
``drift_policy`` param; a training run the gradient-descent guards stop fails ``train`` (logged to MLflow,
never registered) and an unhealthy one (too many clipped or non-finite steps, a failed learning-rate
sensitivity check) fails ``health_gate``; a challenger that is worse than the champion on the same holdout is registered
with ``blessed=false`` and ``promote`` skips; a promoted model that fails ``smoke_test`` is rolled back.
``run_report`` fails the run whenever any of that failed, so a rescued night never looks green.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import DAG, Param, chain

from gd_provider.demo import expectations, pipeline
from gd_provider.operators.drift import DriftCheckOperator
from gd_provider.operators.features import FeastHistoricalFeaturesOperator
from gd_provider.operators.health import TrainingHealthGate
from gd_provider.operators.registry import (
    ModelEvaluationGateOperator,
    ModelSmokeTestOperator,
    PromoteModelOperator,
    RegisterModelOperator,
    RollbackModelOperator,
)
from gd_provider.operators.report import RunReportOperator
from gd_provider.operators.training import RayTrainOperator
from gd_provider.operators.validation import DataValidationOperator

with DAG(
    dag_id="gd_nightly_fraud_retraining",
    description="Nightly guarded retraining of the fraud model",
    schedule="@daily",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    render_template_as_native_obj=True,
    default_args={"retries": 0},
    tags=["gd_provider", "retraining", "fraud"],
    params={
        "training_overrides": Param({}, type="object",
                                    description="TrainingSpec fields to override for this run, e.g. {\"lr\": 0.001}"),
        "drift_policy": Param("retrain", enum=["retrain", "warn", "block"],
                              description="What drift against the champion's training data does"),
        "smoke_test_max_p95_latency_ms": Param(250.0, type="number", exclusiveMinimum=0,
                                               description="Latency budget of the post-promotion smoke test"),
    },
) as dag:
    dataset = FeastHistoricalFeaturesOperator(task_id="retrieve_training_set", **pipeline.RETRIEVAL)
    validate = DataValidationOperator(
        task_id="validate", dataset=dataset.output, expectations=expectations.fraud_expectations
    )
    drift = DriftCheckOperator(
        task_id="drift_check",
        dataset=dataset.output,
        model_name=pipeline.MODEL_NAME,
        policy="{{ params.drift_policy }}",
        **pipeline.DRIFT,
    )
    train = RayTrainOperator(
        task_id="train",
        dataset=dataset.output,
        spec=pipeline.TRAINING_SPEC,
        spec_overrides="{{ params.training_overrides }}",
        model_name=pipeline.MODEL_NAME,
    )
    health_gate = TrainingHealthGate(
        task_id="health_gate", training=train.output, thresholds=pipeline.HEALTH_THRESHOLDS
    )
    evaluate = ModelEvaluationGateOperator(
        task_id="evaluate",
        dataset=dataset.output,
        training=train.output,
        model_name=pipeline.MODEL_NAME,
        policy=pipeline.GATE_POLICY,
    )
    register = RegisterModelOperator(
        task_id="register",
        dataset=dataset.output,
        training=train.output,
        gate=evaluate.output,
        model_name=pipeline.MODEL_NAME,
    )
    promote = PromoteModelOperator(task_id="promote", model=register.output, gate=evaluate.output)
    smoke_test = ModelSmokeTestOperator(
        task_id="smoke_test",
        dataset=dataset.output,
        model_name=pipeline.MODEL_NAME,
        max_p95_latency_ms="{{ params.smoke_test_max_p95_latency_ms }}",
    )
    rollback = RollbackModelOperator(task_id="rollback", promote_task_id="promote")
    report = RunReportOperator(task_id="run_report")

    chain(dataset, validate, drift, train, health_gate, evaluate, register, promote, smoke_test, rollback, report)
