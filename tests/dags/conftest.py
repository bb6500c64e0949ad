"""DAG tests: the real DAG files run with ``dag.test()`` against real Feast/GE/Ray/Evidently/MLflow."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

SMALL = {"days": 40, "n_cards": 1000, "n_merchants": 100, "txns_per_day": 800}
START = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory, airflow_db) -> Path:
    """A project home with the demo's data and Feast repo (small), active for the whole module."""
    from gd_provider.demo.feature_repo import create_feature_repo
    from gd_provider.demo.generator import GeneratorConfig, generate, write_demo_data

    home = tmp_path_factory.mktemp("home")
    previous = os.environ.get("GD_PROVIDER_HOME")
    os.environ["GD_PROVIDER_HOME"] = str(home)
    data_dir = home / "feature_repo" / "data"
    write_demo_data(data_dir, generate(GeneratorConfig(start=START.date().isoformat(), **SMALL)))
    create_feature_repo(home / "feature_repo", data_dir)
    yield home
    if previous is None:
        os.environ.pop("GD_PROVIDER_HOME", None)
    else:
        os.environ["GD_PROVIDER_HOME"] = previous


def night(n: int) -> datetime:
    """Logical date of the n-th night: the data holds days [START, START + 40)."""
    return START + timedelta(days=SMALL["days"] - 3 + n)


@pytest.fixture
def mlflow_client(demo_home):
    from gd_provider.hooks.mlflow import MlflowHook

    return MlflowHook().get_conn()


def materialize(logical_date: datetime) -> dict:
    """Run the feature materialization DAG for a night, as the schedule would before retraining."""
    from tests.harness import airflow_env

    run = airflow_env.run_dag(airflow_env.load_dag("gd_feature_materialization"), logical_date)
    assert run["state"] == "success", run
    return run
