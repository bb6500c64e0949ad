"""The test and demo harness, kept out of the wheel: ``airflow_env`` runs DAGs in-process on a private Airflow
home (``dag.test``, clearing and resuming runs as the scheduler would), ``stack`` starts the full stack's
services (PostgreSQL databases, Redis, an ``mlflow server``, a Ray head, Airflow's components) as local
processes for the system tests. ``make demo`` (scripts/demo.py) and the benchmarks use it from the repository."""
