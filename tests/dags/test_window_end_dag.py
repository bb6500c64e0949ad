"""Real ``dag.test()`` runs: a manual run of a cron DAG waits for features through its last schedule
tick (not through the instant it was triggered), and a materialization rerun that materializes nothing
emits no asset events."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from gd_provider.demo import schema
from tests.harness import airflow_env

from .conftest import materialize, night

pytestmark = pytest.mark.dags

DAG_ID = "gd_test_window_end"
DAG_FILE = f'''
from datetime import UTC, datetime

from airflow.sdk import DAG

from gd_provider.sensors.features import FeatureFreshnessSensor

with DAG("{DAG_ID}", schedule="@daily", start_date=datetime(2026, 1, 1, tzinfo=UTC), catchup=False):
    FeatureFreshnessSensor(
        task_id="features_fresh", feature_views={[schema.CARD_VIEW, schema.MERCHANT_VIEW]!r}, mode="poke",
        poke_interval=1, timeout=5,
    )
'''


@pytest.fixture(scope="module")
def sensor_dag(demo_home):
    path = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) / "gd_test_window_end_dag.py"
    path.write_text(DAG_FILE)
    try:
        yield airflow_env.load_dag(DAG_ID)
    finally:
        path.unlink()


def _xcom(dag_id: str, run_id: str, task_id: str):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(XComModel).filter_by(dag_id=dag_id, run_id=run_id, task_id=task_id,
                                                key="return_value").one()
        return XComModel.deserialize_value(row)


def _asset_events(run_id: str) -> dict[str, dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (session.query(AssetModel.uri, AssetEvent.extra)
                .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                .filter(AssetEvent.source_run_id == run_id).all())
        return {uri: extra for uri, extra in rows}


def test_manual_afternoon_run_waits_for_the_last_tick_and_reruns_emit_no_events(sensor_dag):
    # the nightly materialization ran for night 1 (through midnight) and emitted one event per view
    first = materialize(night(1))
    events = _asset_events(first["run_id"])
    assert set(events) == {f"feast://gd_fraud/{v}" for v in (schema.CARD_VIEW, schema.MERCHANT_VIEW)}
    assert {e["materialized_through"] for e in events.values()} == {night(1).isoformat()}

    # rerun by hand: both views are already materialized through the end, nothing is loaded and no
    # asset event may announce fresh features (asset-scheduled retraining would start)
    again = materialize(night(1))
    assert again["run_id"] != first["run_id"]
    assert _asset_events(again["run_id"]) == {}

    # "Trigger DAG" in the afternoon: a manual run whose logical date is 14:37, not a schedule tick.
    # It must wait for the features through the last tick (midnight), which are there: fresh at once.
    afternoon = night(1) + timedelta(hours=14, minutes=37, seconds=12)
    run = airflow_env.run_dag(sensor_dag, afternoon)
    assert run["tasks"] == {"features_fresh": "success"}, run
    report = _xcom(DAG_ID, run["run_id"], "features_fresh")
    assert report["through"] == night(1).isoformat() and report["stale"] == []
