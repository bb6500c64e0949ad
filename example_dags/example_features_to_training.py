"""Example: compose three gd_provider operators — Feast retrieval → Great Expectations → Ray Train.

No registry, no promotion: a sandbox DAG a data engineer can trigger by hand to see whether a feature
service trains, with every run tracked in MLflow. Assumes the demo's feature repo (``make demo``).
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import DAG, chain

from gd_provider.demo import pipeline
from gd_provider.operators.features import FeastHistoricalFeaturesOperator
from gd_provider.operators.report import RunReportOperator
from gd_provider.operators.training import RayTrainOperator
from gd_provider.operators.validation import DataValidationOperator

with DAG(
    dag_id="gd_example_features_to_training",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    tags=["gd_provider", "example"],
) as dag:
    dataset = FeastHistoricalFeaturesOperator(task_id="retrieve_training_set", **pipeline.RETRIEVAL)
    validate = DataValidationOperator(
        task_id="validate",
        dataset=dataset.output,
        # 'module:function', imported by the task when it runs: parsing this file never imports Great Expectations
        expectations="gd_provider.demo.expectations:fraud_expectations",
    )
    train = RayTrainOperator(
        task_id="train",
        dataset=dataset.output,
        # a quick single-worker logistic regression as a baseline
        spec={**pipeline.TRAINING_SPEC, "model": "logistic", "epochs": 3, "num_workers": 1, "cpus_per_worker": 1.0},
        model_name="fraud_detector_sandbox",
    )
    chain(dataset, validate, train, RunReportOperator(task_id="run_report"))
