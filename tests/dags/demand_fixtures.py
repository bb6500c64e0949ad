"""Fixtures of the demand-domain DAG tests: a project home with the demand data, its Feast repo (project
``gd_demand``, materialized through the end of the data) and the ``feast_demand`` connection."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest

from gd_provider.demo.demand.generator import DemandConfig

DEMAND = DemandConfig(start="2026-01-01", days=40)  # 12 stores x 25 products: 300 sales a day
START = datetime(2026, 1, 1, tzinfo=UTC)
NIGHTS = 5


def demand_night(n: int) -> datetime:
    """Logical date of the n-th night (1 .. NIGHTS): night NIGHTS is the end of the data."""
    assert 1 <= n <= NIGHTS
    return START + timedelta(days=DEMAND.days - NIGHTS + n)


@pytest.fixture(scope="module")
def demand_home(tmp_path_factory, airflow_db):
    """The demand domain set up in a fresh project home, active (with its Feast connection) for the module."""
    from gd_provider.demo.demand.setup import CONN_ENV, setup_demand_home

    home = tmp_path_factory.mktemp("demand_home")
    saved = {name: os.environ.get(name) for name in ("GD_PROVIDER_HOME", CONN_ENV)}
    made = setup_demand_home(home, DEMAND)
    os.environ["GD_PROVIDER_HOME"] = str(made.home)
    os.environ[CONN_ENV] = made.connection
    yield made
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def demand_mlflow(demand_home):
    from gd_provider.hooks.mlflow import MlflowHook

    return MlflowHook().get_conn()
