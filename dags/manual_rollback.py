"""Manual rollback from the Airflow UI: "Trigger DAG w/ config", pick the model, the target version
(a number, or ``previous`` = the champion recorded before the current one) and give a reason.

The triggering user, the reason and this DAG run go into the model's audit trail.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import DAG, Param

from gd_provider.operators.registry import RollbackModelOperator

with DAG(
    dag_id="gd_manual_rollback",
    description="Roll a model's champion alias back, with a reason, from the UI",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["gd_provider", "registry", "manual"],
    params={
        "model_name": Param("fraud_detector", type="string", minLength=1, description="Registered model"),
        "to_version": Param("previous", type="string", pattern=r"^(previous|[0-9]+)$",
                            description="A version number, or 'previous'"),
        "alias": Param("champion", type="string", minLength=1),
        "reason": Param(type="string", minLength=5, description="Why (goes into the audit trail)"),
    },
) as dag:
    RollbackModelOperator(
        task_id="rollback",
        promote_task_id=None,
        model_name="{{ params.model_name }}",
        to_version="{{ params.to_version }}",
        alias="{{ params.alias }}",
        reason="{{ params.reason }}",
    )
