"""Daily Feast materialization of the feature views every retraining config in dags/configs/ reads.

Each view it materializes emits an Airflow Asset event (``feast://<project>/<view>``, with rows and the
interval in the extra), so a retraining DAG can be scheduled on those Assets instead of a cron: e.g.
``schedule: {assets: [feast://gd_fraud/card_stats, feast://gd_fraud/merchant_stats]}`` in its config.
A cron-scheduled retraining DAG waits for this one through its ``features_fresh`` sensor.
See :func:`gd_provider.config_dags.build_materialization_dag`.
"""

from __future__ import annotations

from pathlib import Path

from gd_provider.config_dags import build_materialization_dag

dag = build_materialization_dag(Path(__file__).resolve().parent / "configs")
