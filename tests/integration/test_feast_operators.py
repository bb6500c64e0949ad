"""Feast operators, sensor and trigger against a real small demo repo (SQLite online store).

Each test gets a fresh repo (materialization state lives in its registry) over shared demo data; the
operators run with a small fake task context (``dag_run`` + ``outlet_events``).
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd
import pytest
from airflow.sdk import Asset, AssetAlias
from airflow.sdk.exceptions import AirflowFailException, AirflowSensorTimeout, TaskDeferred
from airflow.sdk.execution_time.context import OutletEventAccessors

from gd_provider.core.data import read_dataset
from gd_provider.demo import schema
from gd_provider.demo.feature_repo import PROJECT, create_feature_repo
from gd_provider.demo.generator import GeneratorConfig, generate, write_demo_data
from gd_provider.demo.schema import training_spec as demo_training_spec
from gd_provider.operators.features import (
    DEFAULT_MATERIALIZED_ALIAS,
    FeastHistoricalFeaturesOperator,
    FeastMaterializeOperator,
    feature_view_asset,
)
from gd_provider.sensors.features import FeatureFreshnessSensor
from gd_provider.triggers.features import FeatureFreshnessTrigger

pytestmark = pytest.mark.integration

CONFIG = GeneratorConfig(seed=11, days=10, n_cards=120, n_merchants=15, txns_per_day=150)
VIEWS = [schema.CARD_VIEW, schema.MERCHANT_VIEW]
KEYS = list(schema.ENTITY_KEYS)


def day(n: int) -> datetime:
    return (CONFIG.start_timestamp + pd.Timedelta(days=n)).to_pydatetime()


@dataclass
class FakeDagRun:
    data_interval_start: datetime | None
    data_interval_end: datetime | None
    dag_id: str = "test_dag"
    run_id: str = "manual__1"

    @property
    def logical_date(self):
        return self.data_interval_start

    @property
    def run_after(self):
        return self.data_interval_end


def context(start: datetime | None, end: datetime | None, run_id: str = "manual__1") -> dict:
    return {"dag_run": FakeDagRun(start, end, run_id=run_id), "outlet_events": OutletEventAccessors()}


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("feast_ops_data")
    data = generate(CONFIG)
    paths = write_demo_data(root, data)
    return {"root": root, "data": data, "paths": paths}


@pytest.fixture
def repo(gd_home, demo_data):
    """A fresh repo at ``<home>/feature_repo`` (where FeastHook looks without a connection)."""
    path = create_feature_repo(gd_home / "feature_repo", demo_data["root"])
    from feast import FeatureStore

    return {"path": path, "store": FeatureStore(repo_path=str(path)), **demo_data}


def _online(store, card_ids):
    return store.get_online_features(
        features=[f"{schema.CARD_VIEW}:card_txn_count_7d", f"{schema.MERCHANT_VIEW}:merchant_risk_score"],
        entity_rows=[{"card_id": int(c), "merchant_id": 1} for c in card_ids],
    ).to_dict()


# --------------------------------------------------------------------------------------- materialize


def test_materialize_named_views_serves_online_features_and_emits_assets(repo):
    op = FeastMaterializeOperator(task_id="materialize", feature_views=[schema.CARD_VIEW], project=PROJECT)
    # no declared per-view Asset: Airflow would register an event for it even when nothing was loaded
    assert op.outlets == [AssetAlias(DEFAULT_MATERIALIZED_ALIAS)]
    cards = [1, 5, 17]
    before = _online(repo["store"], cards)
    assert before["card_txn_count_7d"] == [None, None, None]

    ctx = context(day(3), day(6))
    manifest = op.execute(ctx)

    assert manifest["project"] == PROJECT and manifest["incremental"] is False
    assert manifest["interval"] == [day(3).isoformat(), day(6).isoformat()]
    [view] = manifest["views"]
    assert view["name"] == schema.CARD_VIEW and view["rows"] == CONFIG.n_cards
    assert view["asset_uri"] == f"feast://{PROJECT}/{schema.CARD_VIEW}"
    [event] = ctx["outlet_events"][AssetAlias(DEFAULT_MATERIALIZED_ALIAS)].asset_alias_events
    assert event.dest_asset_key.uri == feature_view_asset(PROJECT, schema.CARD_VIEW).uri
    assert event.extra == {
        "project": PROJECT,
        "view": schema.CARD_VIEW,
        "rows": CONFIG.n_cards,
        "interval": [day(3).isoformat(), day(6).isoformat()],
        "materialized_through": day(6).isoformat(),
    }

    # online: the card snapshot of day 6 (the interval end is inclusive in Feast); merchants untouched
    online = _online(repo["store"], cards)
    cs = repo["data"].card_stats
    snap = cs[cs[schema.TIMESTAMP] == pd.Timestamp(day(6))].set_index("card_id")
    assert online["card_txn_count_7d"] == [int(snap.loc[c, "card_txn_count_7d"]) for c in cards]
    assert online["merchant_risk_score"] == [None, None, None]
    fv = repo["store"].get_feature_view(schema.CARD_VIEW)
    assert [(s, e) for s, e in fv.materialization_intervals] == [(day(3), day(6))]


def test_materialize_all_views_goes_through_the_asset_alias(repo):
    op = FeastMaterializeOperator(task_id="materialize_all")
    assert op.outlets == [AssetAlias(DEFAULT_MATERIALIZED_ALIAS)]
    ctx = context(day(2), day(4))
    manifest = op.execute(ctx)
    assert [v["name"] for v in manifest["views"]] == sorted(VIEWS)
    assert {v["name"]: v["rows"] for v in manifest["views"]} == {
        schema.CARD_VIEW: CONFIG.n_cards,
        schema.MERCHANT_VIEW: CONFIG.n_merchants,
    }
    events = ctx["outlet_events"][AssetAlias(DEFAULT_MATERIALIZED_ALIAS)].asset_alias_events
    assert sorted(e.dest_asset_key.uri for e in events) == sorted(f"feast://{PROJECT}/{v}" for v in VIEWS)
    assert all(e.extra["interval"] == [day(2).isoformat(), day(4).isoformat()] for e in events)
    assert _online(repo["store"], [3])["merchant_risk_score"][0] is not None


def test_materialize_service_and_incremental(repo):
    op = FeastMaterializeOperator(
        task_id="incremental",
        feature_service=schema.FEATURE_SERVICE,
        incremental=True,
        asset_alias="fraud_views",
    )
    assert op.outlets == [AssetAlias("fraud_views")]
    # never materialized: from the data interval start (not from the wall clock)
    ctx = context(day(4), day(5))
    first = op.execute(ctx)
    assert first["incremental"] is True
    assert {v["name"]: v["interval"] for v in first["views"]} == {
        v: [day(4).isoformat(), day(5).isoformat()] for v in VIEWS
    }
    assert len(ctx["outlet_events"][AssetAlias("fraud_views")].asset_alias_events) == 2
    # the next run goes on from there, whatever its own interval start
    second = op.execute(context(day(6), day(7), run_id="manual__2"))
    assert {v["name"]: v["interval"] for v in second["views"]} == {
        v: [day(5).isoformat(), day(7).isoformat()] for v in VIEWS
    }
    assert all(v["rows"] > 0 for v in second["views"])
    # re-running the first run later: nothing to do, no events
    ctx = context(day(4), day(5), run_id="manual__1")
    again = op.execute(ctx)
    assert [(v["skipped"], v["rows"], v["interval"]) for v in again["views"]] == [(True, 0, None)] * 2
    assert {v["materialized_through"] for v in again["views"]} == {day(7).isoformat()}
    assert ctx["outlet_events"][AssetAlias("fraud_views")].asset_alias_events == []
    fv = repo["store"].get_feature_view(schema.CARD_VIEW)
    assert fv.most_recent_end_time == day(7)


def test_incremental_first_run_with_an_empty_interval_loads_one_ttl_window(repo):
    # trigger timetables (Airflow 3's default for cron schedules) give data_interval_start == end
    op = FeastMaterializeOperator(task_id="incremental", feature_views=[schema.CARD_VIEW], incremental=True)
    out = op.execute(context(day(6), day(6)))
    ttl = repo["store"].get_feature_view(schema.CARD_VIEW).ttl
    [view] = out["views"]
    assert not view["skipped"] and view["rows"] > 0
    assert view["interval"] == [(day(6) - ttl).isoformat(), day(6).isoformat()]
    assert repo["store"].get_feature_view(schema.CARD_VIEW).most_recent_end_time == day(6)


def test_non_incremental_materialization_of_an_empty_interval_fails_and_moves_nothing(repo):
    # CronTriggerTimetable (Airflow 3's default for a cron schedule) gives data_interval_start == end:
    # Feast would load nothing and still mark the view materialized through the end
    op = FeastMaterializeOperator(task_id="m", feature_views=[schema.CARD_VIEW], project=PROJECT)
    ctx = context(day(6), day(6))
    with pytest.raises(AirflowFailException, match="empty materialization interval .* incremental=True"):
        op.execute(ctx)
    assert repo["store"].get_feature_view(schema.CARD_VIEW).most_recent_end_time is None
    assert ctx["outlet_events"][AssetAlias(DEFAULT_MATERIALIZED_ALIAS)].asset_alias_events == []


def test_sensor_and_retrieval_of_a_manual_afternoon_run_use_the_last_tick(repo, labels):
    """A UI trigger of a daily cron DAG at 14:37 (interval (now, now)): the sensor is satisfied by the
    materialization through midnight, and the training set ends at that midnight too."""
    from types import SimpleNamespace

    from airflow.sdk import DAG

    afternoon = day(6) + timedelta(hours=14, minutes=37)
    dag = DAG("nightly", schedule="@daily", start_date=day(0))
    dag_run = SimpleNamespace(dag_id="nightly", run_id="manual__pm", run_type="manual", logical_date=afternoon,
                              data_interval_start=afternoon, data_interval_end=afternoon, run_after=afternoon)
    ctx = {"dag_run": dag_run, "dag": dag, "params": {"as_of": ""}, "outlet_events": OutletEventAccessors()}
    FeastMaterializeOperator(task_id="m", feature_views=VIEWS, incremental=True).execute(context(day(3), day(6)))

    done = FeatureFreshnessSensor(task_id="fresh", feature_views=VIEWS).poke(ctx)
    assert done.is_done and done.xcom_value["through"] == day(6).isoformat()
    retrieve = FeastHistoricalFeaturesOperator(
        task_id="retrieve", label_source=labels, as_of="{{ params.as_of }}", **RETRIEVAL
    )
    retrieve.render_template_fields(ctx)
    result = retrieve.execute(ctx)
    assert result["data_interval"] == [day(3).isoformat(), day(6).isoformat()]


def test_materialize_refuses_wrong_project_and_unknown_views(repo):
    with pytest.raises(AirflowFailException, match="project is 'gd_fraud', not 'other'"):
        FeastMaterializeOperator(task_id="m", feature_views=[schema.CARD_VIEW], project="other").execute(
            context(day(1), day(2))
        )
    with pytest.raises(AirflowFailException, match="unknown feature views: nope"):
        FeastMaterializeOperator(task_id="m", feature_views=["nope"]).execute(context(day(1), day(2)))
    with pytest.raises(ValueError, match="not both"):
        FeastMaterializeOperator(task_id="m", feature_views=["a"], feature_service="s")


# ------------------------------------------------------------------------------------------- sensor


def test_freshness_sensor_poke_stale_then_fresh(repo):
    sensor = FeatureFreshnessSensor(task_id="fresh", feature_service=schema.FEATURE_SERVICE)
    assert sensor.mode == "reschedule"
    ctx = context(day(5), day(6))
    assert sensor.poke(ctx) is False
    msg = sensor._last_report.message()
    assert "2 of 2 feature views not materialized through " + day(6).isoformat() in msg
    assert "card_stats (never materialized)" in msg and "merchant_stats (never materialized)" in msg

    # materialized by another process (a new store object): the sensor reads the registry afresh
    FeastMaterializeOperator(task_id="m", feature_views=[schema.CARD_VIEW]).execute(context(day(3), day(6)))
    FeastMaterializeOperator(task_id="m", feature_views=[schema.MERCHANT_VIEW]).execute(
        context(day(3), day(5))
    )
    assert sensor.poke(ctx) is False
    msg = sensor._last_report.message()
    assert msg == (
        f"1 of 2 feature views not materialized through {day(6).isoformat()}: "
        f"merchant_stats (materialized through {day(5).isoformat()})"
    )

    FeastMaterializeOperator(task_id="m", feature_views=[schema.MERCHANT_VIEW]).execute(
        context(day(5), day(6))
    )
    done = sensor.poke(ctx)
    assert done.is_done and done.xcom_value["fresh"] is True and done.xcom_value["stale"] == []
    assert done.xcom_value["watermarks"] == {
        schema.CARD_VIEW: day(6).isoformat(),
        schema.MERCHANT_VIEW: day(6).isoformat(),
    }


def test_freshness_sensor_timeout_names_stale_views(repo):
    FeastMaterializeOperator(task_id="m", feature_views=[schema.CARD_VIEW]).execute(context(day(3), day(4)))
    sensor = FeatureFreshnessSensor(task_id="fresh", mode="poke", timeout=0, poke_interval=0)
    with pytest.raises(AirflowSensorTimeout) as info:
        sensor.execute(context(day(5), day(6)))
    msg = str(info.value)
    assert "timed out" in msg
    assert f"card_stats (materialized through {day(4).isoformat()})" in msg
    assert "merchant_stats (never materialized)" in msg
    with pytest.raises(AirflowFailException, match="unknown feature views: nope"):
        FeatureFreshnessSensor(task_id="f", feature_views=["nope"]).poke(context(day(5), day(6)))


def _first_event(trigger):
    async def first():
        async for event in trigger.run():
            return event

    return asyncio.run(asyncio.wait_for(first(), timeout=60))


def test_deferrable_sensor_and_trigger(repo):
    sensor = FeatureFreshnessSensor(
        task_id="fresh", feature_views=[schema.CARD_VIEW], deferrable=True, poke_interval=0.2, timeout=300
    )
    ctx = context(day(5), day(6))
    with pytest.raises(TaskDeferred) as info:
        sensor.execute(ctx)
    trigger = info.value.trigger
    assert isinstance(trigger, FeatureFreshnessTrigger) and info.value.method_name == "execute_complete"
    classpath, kwargs = trigger.serialize()
    assert classpath == "gd_provider.triggers.features.FeatureFreshnessTrigger"
    assert kwargs["repo_path"] == str(repo["path"]) and kwargs["through"] == day(6).isoformat()
    assert kwargs["feature_views"] == [schema.CARD_VIEW]
    rebuilt = FeatureFreshnessTrigger(**kwargs)

    # stale and past its deadline: a timeout event naming the view and its watermark
    expired = FeatureFreshnessTrigger(**{**kwargs, "timeout_at": "2000-01-01T00:00:00+00:00"})
    event = _first_event(expired)
    assert event.payload["status"] == "timeout"
    assert "card_stats (never materialized)" in event.payload["message"]
    with pytest.raises(AirflowSensorTimeout, match=r"card_stats \(never materialized\)"):
        sensor.execute_complete(ctx, event.payload)

    # materialize while the trigger polls: it fires once the view is fresh
    async def materialize_later():
        await asyncio.sleep(0.5)
        await asyncio.to_thread(
            FeastMaterializeOperator(task_id="m", feature_views=[schema.CARD_VIEW]).execute,
            context(day(4), day(6)),
        )

    async def both():
        job = asyncio.create_task(materialize_later())
        async for event in rebuilt.run():
            await job
            return event

    event = asyncio.run(asyncio.wait_for(both(), timeout=120))
    assert event.payload["status"] == "fresh"
    assert event.payload["report"]["watermarks"] == {schema.CARD_VIEW: day(6).isoformat()}
    assert sensor.execute_complete(ctx, event.payload)["fresh"] is True
    # fresh already: no deferral at all
    assert sensor.execute(ctx)["fresh"] is True

    error = _first_event(FeatureFreshnessTrigger(**{**kwargs, "feature_views": ["nope"]}))
    assert error.payload["status"] == "error" and "nope" in error.payload["message"]
    with pytest.raises(AirflowFailException, match="nope"):
        sensor.execute_complete(ctx, error.payload)


# ------------------------------------------------------------------------------------ retrieval extras

RETRIEVAL = {
    "feature_service": schema.FEATURE_SERVICE,
    "entity_keys": KEYS,
    "timestamp_column": schema.TIMESTAMP,
    "label_column": schema.LABEL,
    "sort_by": [schema.TIMESTAMP, schema.TRANSACTION_ID],
    "lookback": timedelta(days=3),
}


@pytest.fixture
def labels(repo, gd_home):
    """The demo's transactions copied under the project home (label sources must live there)."""
    shutil.copytree(repo["paths"]["transactions"], gd_home / "labels")
    return "labels"


def test_historical_features_from_parquet_sql_and_callable_agree(repo, labels):
    tx_dir = repo["paths"]["transactions"]
    windows = []

    def from_callable(start, end):
        windows.append((start, end))
        tx = repo["data"].transactions
        return tx[(tx[schema.TIMESTAMP] >= start) & (tx[schema.TIMESTAMP] < end)]

    ops = {
        "parquet": FeastHistoricalFeaturesOperator(task_id="parquet", label_source=labels, **RETRIEVAL),
        "sql": FeastHistoricalFeaturesOperator(
            task_id="sql",
            entity_sql=f"SELECT * FROM read_parquet('{tx_dir}/*.parquet') "
            f"WHERE {schema.TIMESTAMP} >= $start AND {schema.TIMESTAMP} < $end",
            **RETRIEVAL,
        ),
        "callable": FeastHistoricalFeaturesOperator(
            task_id="callable", entity_callable=from_callable, **RETRIEVAL
        ),
    }
    manifests = {}
    for name, op in ops.items():
        assert op.outlets == [Asset(f"gd-dataset://{op.dag_id}/{name}")]
        ctx = context(day(6), day(8), run_id=f"run_{name}")
        manifests[name] = op.execute(ctx)
        extra = ctx["outlet_events"][op.outlets[0]].extra
        assert extra["sha256"] == manifests[name]["sha256"] and extra["rows"] == manifests[name]["rows"]
        assert extra["data_interval"] == [day(5).isoformat(), day(8).isoformat()]
    assert windows == [(day(5), day(8))]
    assert manifests["parquet"]["rows"] == 3 * CONFIG.txns_per_day
    # the same rows from three sources give the same file (sorted, deterministic)
    assert len({m["sha256"] for m in manifests.values()}) == 1
    stats = manifests["parquet"]["entity_source_stats"]
    assert stats["rows_in_window"] == 3 * CONFIG.txns_per_day
    # the label source holds days after the window: left out, and reported
    assert stats["rows_after_window"] == 2 * CONFIG.txns_per_day
    assert stats["rows_before_window"] == 5 * CONFIG.txns_per_day


def test_historical_features_bad_input_fails_clearly(repo, labels, gd_home):
    tx_dir = repo["paths"]["transactions"]
    ctx = context(day(6), day(8))
    # unknown feature reference
    op = FeastHistoricalFeaturesOperator(
        task_id="t",
        label_source=labels,
        **{**RETRIEVAL, "feature_service": None, "features": ["card_stats:nope"]},
    )
    with pytest.raises(AirflowFailException, match="unknown feature refs: card_stats:nope"):
        op.execute(ctx)
    # corrupted parquet label source
    bad = gd_home / "bad_labels"
    bad.mkdir()
    (bad / "2026-01-07.parquet").write_bytes(b"PAR1 this is not parquet")
    op = FeastHistoricalFeaturesOperator(task_id="t", label_source="bad_labels", **RETRIEVAL)
    with pytest.raises(AirflowFailException, match="is not readable parquet"):
        op.execute(ctx)
    # a relative label source leaving the project home (an absolute path there is read: test_label_source.py)
    op = FeastHistoricalFeaturesOperator(task_id="t", label_source="../elsewhere", **RETRIEVAL)
    with pytest.raises(AirflowFailException, match="outside the project home .*give an absolute path"):
        op.execute(ctx)
    # empty window (no label rows at all in it)
    op = FeastHistoricalFeaturesOperator(task_id="t", label_source=labels, **RETRIEVAL)
    with pytest.raises(AirflowFailException, match=r"empty window: label source .* has no entity rows in \["):
        op.execute(context(day(40), day(41)))
    # a query that returns rows after the data interval: refused, with counts
    op = FeastHistoricalFeaturesOperator(
        task_id="t", entity_sql=f"SELECT * FROM read_parquet('{tx_dir}/*.parquet')", **RETRIEVAL
    )
    with pytest.raises(AirflowFailException) as info:
        op.execute(ctx)
    msg = str(info.value)
    assert f"{2 * CONFIG.txns_per_day} at or after the window end {day(8).isoformat()}" in msg
    assert f"{5 * CONFIG.txns_per_day} before the window start" in msg
    with pytest.raises(ValueError, match="exactly one of label_source, entity_sql, entity_callable"):
        FeastHistoricalFeaturesOperator(task_id="t", label_source=labels, entity_sql="SELECT 1", **RETRIEVAL)


def test_duplicate_entity_rows_are_kept_at_retrieval(repo):
    def doubled(start, end):
        tx = repo["data"].transactions
        window = tx[(tx[schema.TIMESTAMP] >= start) & (tx[schema.TIMESTAMP] < end)].head(40)
        return pd.concat([window, window], ignore_index=True)

    op = FeastHistoricalFeaturesOperator(task_id="dupes", entity_callable=doubled, **RETRIEVAL)
    manifest = op.execute(context(day(6), day(8)))
    out = read_dataset(manifest)
    assert manifest["rows"] == 80 == len(out)
    assert (out[schema.TRANSACTION_ID].value_counts() == 2).all()
    assert not out[list(schema.CARD_FEATURES)].isna().any().any()


def test_provider_info_lists_sensor_and_trigger():
    from gd_provider.get_provider_info import get_provider_info

    info = get_provider_info()
    modules = {
        m for group in ("operators", "sensors", "triggers") for e in info[group] for m in e["python-modules"]
    }
    assert {
        "gd_provider.operators.features",
        "gd_provider.sensors.features",
        "gd_provider.triggers.features",
    } <= modules


# ------------------------------------------------------------------- partitioned training sets (issue 3)


def test_large_training_set_is_partitioned_and_every_consumer_reads_it(repo, labels, gd_home):
    from gd_provider.core.data import DEFAULT_PARTITION_ROWS
    from gd_provider.core.training.runner import holdout_frame
    from gd_provider.operators import features as features_ops

    assert features_ops.DEFAULT_PARTITION_ROWS == DEFAULT_PARTITION_ROWS == 1_000_000
    rows = 3 * CONFIG.txns_per_day  # 450 rows in the window
    single_op = FeastHistoricalFeaturesOperator(task_id="single", label_source=labels, **RETRIEVAL)
    parts_op = FeastHistoricalFeaturesOperator(
        task_id="parts", label_source=labels, partition_rows=200, **RETRIEVAL
    )
    # two retrieval tasks in one DAG run: outputs are keyed by run and task, so neither overwrites the other
    single = single_op.execute(context(day(6), day(8), run_id="r1"))
    ctx = context(day(6), day(8), run_id="r1")
    parts = parts_op.execute(ctx)

    assert single["partitions"] is None and single["rows"] == rows
    assert single["uri"] == str(gd_home / "runs" / "test_dag" / "r1" / "single" / "training_set.parquet")
    root = gd_home / "runs" / "test_dag" / "r1" / "parts" / "training_set.parquet"
    assert parts["uri"] == str(root) and root.is_dir()  # same URI shape: a directory now
    assert parts["partitions"]["parts"] == 3 and parts["partitions"]["rows_per_part"] == 200
    assert [f["rows"] for f in parts["partitions"]["files"]] == [200, 200, 50]
    assert sorted(p.name for p in root.glob("part-*.parquet")) == [f"part-0000{i}.parquet" for i in range(3)]
    assert ctx["outlet_events"][parts_op.outlets[0]].extra["parts"] == 3
    for field in ("rows", "columns", "event_time_range", "data_interval", "feature_refs", "entity_keys"):
        assert parts[field] == single[field], field
    # the same rows, in the same order, with the same dtypes as a single-file write
    pd.testing.assert_frame_equal(read_dataset(parts), read_dataset(single))
    # reruns (a retry of the same DAG run, or another DAG run on the same window) give the same digest
    again = parts_op.execute(context(day(6), day(8), run_id="r1"))
    other_run = parts_op.execute(context(day(6), day(8), run_id="r2"))
    assert parts["sha256"] == again["sha256"] == other_run["sha256"]
    assert other_run["uri"] != parts["uri"]

    # the evaluation gate's holdout (and the training split) come from read_dataset: identical rows
    spec = demo_training_spec(epochs=1)
    pd.testing.assert_frame_equal(holdout_frame(parts, spec), holdout_frame(single, spec))

    with pytest.raises(ValueError, match="partition_rows must be a positive integer"):
        FeastHistoricalFeaturesOperator(task_id="bad", label_source=labels, partition_rows=0, **RETRIEVAL)


def _champion_with_lineage(client, name: str, manifest: dict, tmp_path) -> str:
    from gd_provider.core.lineage import DATASET_SHA256, DATASET_URI

    client.create_registered_model(name)
    source = tmp_path / "model_source"
    source.mkdir(exist_ok=True)
    version = client.create_model_version(
        name, str(source), tags={DATASET_URI: manifest["uri"], DATASET_SHA256: manifest["sha256"]}
    ).version
    client.set_registered_model_alias(name, "champion", version)
    return version


def test_drift_reference_from_lineage_reads_and_verifies_a_partitioned_dataset(repo, labels, gd_home, tmp_path):
    """The drift check finds the champion's training set through lineage tags (uri + sha256 only)."""
    import pyarrow.parquet as pq

    from gd_provider.hooks.mlflow import MlflowHook
    from gd_provider.operators.drift import DriftCheckOperator

    reference = FeastHistoricalFeaturesOperator(
        task_id="ref", label_source=labels, partition_rows=200, **RETRIEVAL
    ).execute(context(day(5), day(7), run_id="champion_run"))
    current = FeastHistoricalFeaturesOperator(task_id="cur", label_source=labels, **RETRIEVAL).execute(
        context(day(6), day(9), run_id="challenger_run")
    )
    assert reference["partitions"]["parts"] == 3
    client = MlflowHook().get_config().client()
    _champion_with_lineage(client, "fraud_partitioned", reference, tmp_path)
    op = DriftCheckOperator(
        task_id="drift",
        dataset=current,
        model_name="fraud_partitioned",
        numeric_columns=["amount", "merchant_risk_score"],
        prediction_drift=False,
        policy="warn",
    )
    out = op.execute(context(day(6), day(9), run_id="challenger_run"))
    assert out["reference_rows"] == reference["rows"] and out["current_rows"] == current["rows"]

    # a part of the champion's data altered after registration: the drift check names the file
    part = reference["partitions"]["files"][2]["name"]
    path = gd_home / "runs" / "test_dag" / "champion_run" / "ref" / "training_set.parquet" / part
    table = pq.read_table(path).to_pandas()
    table["amount"] = table["amount"] * 3
    table.to_parquet(path, index=False)
    with pytest.raises(AirflowFailException, match=rf"drift check cannot read its data: .*{part} changed"):
        op.execute(context(day(6), day(9), run_id="challenger_run"))


# ------------------------------------------------------------------------ MLflow dataset input (issue 3)


def test_training_set_is_logged_as_an_mlflow_dataset_input(repo, labels, mlflow_conn):
    import json

    client = mlflow_conn.client()
    experiment_id = client.create_experiment("datasets")
    run_id = client.create_run(experiment_id).info.run_id
    assert "mlflow_run_id" in FeastHistoricalFeaturesOperator.template_fields

    op = FeastHistoricalFeaturesOperator(
        task_id="logged", label_source=labels, partition_rows=200, mlflow_run_id=run_id, **RETRIEVAL
    )
    manifest = op.execute(context(day(6), day(8)))
    assert manifest["mlflow_input"] == {"run_id": run_id, "name": "training_set", "digest": manifest["sha256"][:36]}
    op.execute(context(day(6), day(8)))  # a retry logs nothing twice

    run = client.get_run(run_id)
    (entry,) = run.inputs.dataset_inputs
    ds = entry.dataset
    assert ds.name == "training_set" and ds.digest == manifest["sha256"][:36]
    assert ds.source_type == "local" and json.loads(ds.source) == {"uri": manifest["uri"]}
    tags = {t.key: t.value for t in entry.tags}
    assert tags["mlflow.data.context"] == "training"
    assert tags["gd.dataset.sha256"] == manifest["sha256"] and tags["gd.dataset.rows"] == str(manifest["rows"])
    assert tags["gd.dataset.parts"] == "3"
    profile = json.loads(ds.profile)
    assert profile["sha256"] == manifest["sha256"] and profile["num_rows"] == manifest["rows"] == 450
    assert profile["partitions"] == {"parts": 3, "rows_per_part": 200}
    assert profile["columns"] == manifest["columns"] and profile["feature_refs"] == manifest["feature_refs"]
    assert profile["data_interval"] == manifest["data_interval"]
    colspecs = {c["name"]: c for c in json.loads(ds.schema)["mlflow_colspec"]}
    assert colspecs[schema.LABEL]["type"] == "long" and colspecs[schema.LABEL]["required"] is True
    assert colspecs[schema.TIMESTAMP]["type"] == "datetime"
    assert colspecs["amount"]["type"] == "double" and colspecs["amount"]["required"] is False
    # metadata only: nothing uploaded, the records are small
    assert client.list_artifacts(run_id) == []
    assert len(ds.profile) + len(ds.schema) + len(ds.source) < 8_000

    # another run logs the same dataset: the same MLflow dataset, found from either run
    other = client.create_run(experiment_id).info.run_id
    FeastHistoricalFeaturesOperator(
        task_id="logged", label_source=labels, partition_rows=200, mlflow_run_id=other, **RETRIEVAL
    ).execute(context(day(6), day(8)))
    assert client.get_run(other).inputs.dataset_inputs[0].dataset.digest == ds.digest

    bad = FeastHistoricalFeaturesOperator(
        task_id="bad_run", label_source=labels, mlflow_run_id="0" * 32, **RETRIEVAL
    )
    with pytest.raises(AirflowFailException, match=f"dataset input of MLflow run '{'0' * 32}'"):
        bad.execute(context(day(6), day(8)))
    # no run given (or an empty rendered template): nothing logged, no mlflow_input
    blank = FeastHistoricalFeaturesOperator(task_id="blank", label_source=labels, mlflow_run_id=" ", **RETRIEVAL)
    assert "mlflow_input" not in blank.execute(context(day(6), day(8)))
