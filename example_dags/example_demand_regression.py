"""Example: nightly guarded retraining of a demand forecast (regression) for dynamic pricing.

The second domain of the demo, built from a config the way a data engineer brings a new model:
``configs/demand_regression.yaml`` (next to this file) through
:func:`gd_provider.factory.build_retraining_dag`: the same config a file in ``dags/configs/`` would be.
The model predicts ``units_sold`` per store, product and day (task ``regression``, MSE on the standardized
target) from the day's price, discount, promotion and calendar plus three Feast views of the project
``gd_demand`` (``product_stats``, ``store_stats``, ``store_product_stats``: a view keyed by both entities).
The gate asks for R² >= 0.5 and at most 8 % worse RMSE (12 % worse p90 absolute error) than the champion on
the challenger's holdout.

Set up the data, the Feast repo (``<project home>/demand_repo``) and the ``feast_demand`` connection::

    python -m gd_provider.demo.demand            # prints: export AIRFLOW_CONN_FEAST_DEMAND='...'

Tested end to end in ``tests/dags/test_demand_examples.py`` (champion, challenger, rejected challenger,
validation stop, rollback).
"""

from __future__ import annotations

from pathlib import Path

from gd_provider.factory import build_retraining_dag

CONFIG = Path(__file__).resolve().parent / "configs" / "demand_regression.yaml"

dag = build_retraining_dag(CONFIG)
