"""Example: nightly guarded retraining of a demand-level classifier (multiclass: low / normal / high).

The second domain of the demo, built from a config the way a data engineer brings a new model:
``configs/demand_level_multiclass.yaml`` (next to this file) through
:func:`gd_provider.factory.build_retraining_dag`. The label ``demand_level`` says whether a store-product's
units of a day were below 0.85x, within, or above 1.2x its 28-day average; the classes are declared in
``training.task_options.classes`` (the order of the model's outputs), so a value outside them stops the run at
validation. Same features as the regression example (``gd_demand`` Feast views); the gate asks for
macro F1 >= 0.45 and accuracy >= 0.5, and at most 0.03 worse than the champion in each.

Set up the data, the Feast repo (``<project home>/demand_repo``) and the ``feast_demand`` connection::

    python -m gd_provider.demo.demand            # prints: export AIRFLOW_CONN_FEAST_DEMAND='...'

Tested end to end in ``tests/dags/test_demand_examples.py``.
"""

from __future__ import annotations

from pathlib import Path

from gd_provider.factory import build_retraining_dag

CONFIG = Path(__file__).resolve().parent / "configs" / "demand_level_multiclass.yaml"

dag = build_retraining_dag(CONFIG)
