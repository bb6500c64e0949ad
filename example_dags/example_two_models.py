"""Example: two models retrained in one DAG, composed from the factory's stages.

An MLP and a logistic-regression baseline are trained on the same feature service, each behind its own
gates, registered under its own name and promoted to its own ``@champion``. Each model's stages get a
group id (task ids ``mlp_release.promote``, ``logistic_training.train``) and a ``param_prefix``, so each
model has its own Params in the trigger form (``logistic_training_overrides``, ``mlp_drift_policy``, ...)
and its own rerun Variable (``gd_rerun.gd_example_two_models.logistic_training.train``): an override
for one model never retrains the other. ``as_of`` (the end of the data window) is shared by both.

Assumes the demo's feature repo (``make demo``); no freshness sensor, so trigger it by hand.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import DAG, chain

from gd_provider.demo import pipeline
from gd_provider.factory import data_stage, load_config, release_stage, training_stage
from gd_provider.operators.report import RunReportOperator

DAG_ID = "gd_example_two_models"


def _config(model_name: str, **training: object) -> object:
    retrieval = {k: v for k, v in pipeline.RETRIEVAL.items() if k != "lookback"}
    return load_config({
        "dag_id": DAG_ID,
        "model_name": model_name,
        "schedule": {"cron": "@daily"},  # not used: the composed DAG below has its own schedule
        "features": {**retrieval, "lookback_days": pipeline.LOOKBACK.days},
        "validation": {"expectations": "gd_provider.demo.expectations:fraud_expectations", "schema_checks": True,
                       "champion_checks": True, "tolerances": {"range_widening": 10.0}},
        "drift": {**pipeline.DRIFT, "policy": "retrain"},
        "training": {**pipeline.TRAINING_SPEC, "num_workers": 1, "cpus_per_worker": 1.0, **training},
        "health": pipeline.HEALTH_THRESHOLDS,
        "gate": pipeline.GATE_POLICY,
    })


MODELS = {
    "mlp": _config("fraud_mlp_example", epochs=4),
    "logistic": _config("fraud_logistic_example", model="logistic", epochs=4, lr=0.01),
}

with DAG(
    dag_id=DAG_ID,
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    render_template_as_native_obj=True,  # the Params reach the operators as objects, not strings
    tags=["gd_provider", "example"],
) as dag:
    report = RunReportOperator(task_id="run_report")
    for key, cfg in MODELS.items():
        data, dataset = data_stage(cfg, group_id=f"{key}_data", param_prefix=f"{key}_")
        training_group, training = training_stage(cfg, dataset, group_id=f"{key}_training", param_prefix=f"{key}_")
        release = release_stage(cfg, dataset, training, group_id=f"{key}_release", param_prefix=f"{key}_")
        chain(data, training_group, release, report)
