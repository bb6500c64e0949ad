"""Manual rollback from the Airflow UI: "Trigger DAG", pick the model (the retraining configs' models in
dags/configs/ are proposed), the target version (a number, or ``previous`` = the champion recorded
before the current one) and give a reason.

The triggering user, the reason and this DAG run go into the model's audit trail.
See :func:`gd_provider.config_dags.build_manual_rollback_dag`.
"""

from __future__ import annotations

from pathlib import Path

from gd_provider.config_dags import build_manual_rollback_dag

dag = build_manual_rollback_dag(Path(__file__).resolve().parent / "configs")
