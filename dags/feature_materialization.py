"""Daily Feast materialization of the demo's feature views into the online store.

Each view it materializes emits an Airflow Asset event (``feast://gd_fraud/<view>``, with rows and the
interval in the extra), so a retraining DAG can be scheduled on those Assets instead of a cron: set
``schedule: {assets: [feast://gd_fraud/card_stats, feast://gd_fraud/merchant_stats]}`` in its config.
The nightly retraining DAG waits for this one through its ``features_fresh`` sensor.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import DAG

from gd_provider.demo import schema
from gd_provider.operators.features import FeastMaterializeOperator

with DAG(
    dag_id="gd_feature_materialization",
    description="Materialize the fraud feature views; emits one Asset per view",
    schedule="@daily",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["gd_provider", "features"],
) as dag:
    FeastMaterializeOperator(
        task_id="materialize",
        project="gd_fraud",
        feature_views=[schema.CARD_VIEW, schema.MERCHANT_VIEW],
        incremental=True,
    )
