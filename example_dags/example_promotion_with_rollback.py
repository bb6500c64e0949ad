"""Example: the promotion pattern on its own — evaluate → register → promote → smoke test → rollback.

The gate here only asks for absolute quality (no comparison with the champion), so each healthy model
is promoted; the smoke test then guards the champion and ``rollback`` restores the previous one when it
fails. Trigger it with ``{"smoke_test_max_p95_latency_ms": 0.001}`` to watch a rollback happen.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import DAG, Param, chain

from gd_provider.demo import pipeline
from gd_provider.operators.features import FeastHistoricalFeaturesOperator
from gd_provider.operators.registry import (
    ModelEvaluationGateOperator,
    ModelSmokeTestOperator,
    PromoteModelOperator,
    RegisterModelOperator,
    RollbackModelOperator,
)
from gd_provider.operators.report import RunReportOperator
from gd_provider.operators.training import RayTrainOperator

MODEL_NAME = "fraud_detector_rollback_example"

with DAG(
    dag_id="gd_example_promotion_with_rollback",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    render_template_as_native_obj=True,
    params={"smoke_test_max_p95_latency_ms": Param(250.0, type="number", exclusiveMinimum=0)},
    tags=["gd_provider", "example"],
) as dag:
    dataset = FeastHistoricalFeaturesOperator(task_id="retrieve_training_set", **pipeline.RETRIEVAL)
    train = RayTrainOperator(
        task_id="train",
        dataset=dataset.output,
        spec={**pipeline.TRAINING_SPEC, "epochs": 3, "num_workers": 1, "cpus_per_worker": 1.0},
        model_name=MODEL_NAME,
    )
    evaluate = ModelEvaluationGateOperator(
        task_id="evaluate",
        dataset=dataset.output,
        training=train.output,
        model_name=MODEL_NAME,
        policy={"value_thresholds": {"roc_auc": 0.7}},
    )
    register = RegisterModelOperator(
        task_id="register", dataset=dataset.output, training=train.output, gate=evaluate.output, model_name=MODEL_NAME
    )
    promote = PromoteModelOperator(task_id="promote", model=register.output, gate=evaluate.output)
    smoke_test = ModelSmokeTestOperator(
        task_id="smoke_test",
        dataset=dataset.output,
        model_name=MODEL_NAME,
        max_p95_latency_ms="{{ params.smoke_test_max_p95_latency_ms }}",
    )
    rollback = RollbackModelOperator(task_id="rollback", promote_task_id="promote")
    chain(dataset, train, evaluate, register, promote, smoke_test, rollback, RunReportOperator(task_id="run_report"))
