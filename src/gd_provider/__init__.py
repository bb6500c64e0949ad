"""gd_provider: guarded gradient-descent retraining on Apache Airflow.

Airflow-facing parts live in ``hooks``/``operators``; the ML logic (data manifests, validation, drift,
training loop, gate, registry policy) lives in ``core`` and never imports Airflow.
"""

__version__ = "0.1.0"
