"""The data window end of a DAG run (``_common.data_window_end``): one rule for the freshness sensor,
retrieval and validation, over fake contexts with real Task SDK DAGs/timetables and asset events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from airflow.sdk import DAG, Asset
from airflow.sdk.api.datamodels._generated import (
    AssetAliasReferenceAssetEventDagRun,
    AssetEventDagRunReference,
    AssetReferenceAssetEventDagRun,
)
from airflow.sdk.definitions.timetables.assets import AssetOrTimeSchedule
from airflow.sdk.definitions.timetables.trigger import CronTriggerTimetable, MultipleCronTriggerTimetable
from airflow.sdk.exceptions import AirflowFailException
from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

from gd_provider.operators._common import data_window_end, interval, last_cron_tick

CARD = Asset("feast://gd_fraud/card_stats")
MERCHANT = Asset("feast://gd_fraud/merchant_stats")
NIGHTLY = datetime(2026, 3, 10, 2, 0, tzinfo=UTC)  # a tick of "0 2 * * *"
TRIGGERED = datetime(2026, 3, 10, 14, 37, 12, tzinfo=UTC)  # "Trigger DAG" clicked in the afternoon


def _dag(schedule):
    return DAG("window_test", schedule=schedule, start_date=datetime(2026, 1, 1, tzinfo=UTC))


def _context(run_type, *, start=None, end=None, logical_date=None, run_after=None, dag=None, params=None,
             events=None):
    dag_run = SimpleNamespace(
        dag_id="window_test", run_id=f"{run_type}__x", run_type=run_type, data_interval_start=start,
        data_interval_end=end, logical_date=logical_date, run_after=run_after or end or logical_date,
    )
    ctx = {"dag_run": dag_run, "params": params or {}}
    if dag is not None:
        ctx["dag"] = dag
    if events is not None:
        ctx["triggering_asset_events"] = events
    return ctx


def _manual_ui_run(dag, *, with_logical_date=True, params=None):
    # what Airflow 3.3 gives a UI trigger of a CronTriggerTimetable DAG: the interval (now, now)
    when = TRIGGERED if with_logical_date else None
    return _context("manual", start=when, end=when, logical_date=when, run_after=TRIGGERED, dag=dag, params=params)


def _event(asset: Asset, extra: dict, *, alias: str | None = None) -> AssetEventDagRunReferenceResult:
    return AssetEventDagRunReferenceResult.from_asset_event_dag_run_reference(
        AssetEventDagRunReference(
            asset=AssetReferenceAssetEventDagRun(name=asset.name, uri=asset.uri, extra={}),
            extra=extra, source_task_id="materialize", source_dag_id="gd_feature_materialization",
            source_run_id="scheduled__1", source_map_index=-1,
            source_aliases=[AssetAliasReferenceAssetEventDagRun(name=alias)] if alias else [],
            timestamp=datetime(2026, 3, 10, 0, 5, tzinfo=UTC),
        )
    )


def _through(when: datetime) -> dict:
    return {"project": "gd_fraud", "rows": 10, "interval": [(when - timedelta(days=1)).isoformat(), when.isoformat()],
            "materialized_through": when.isoformat()}


# ------------------------------------------------------------------------------------------ as_of


def test_as_of_argument_then_param_win_over_every_run_type():
    ctx = _manual_ui_run(_dag("0 2 * * *"), params={"as_of": "2026-02-01"})
    found = data_window_end(ctx)
    assert (found.end, found.rule) == (datetime(2026, 2, 1, tzinfo=UTC), "as_of")  # naive: UTC
    found = data_window_end(ctx, as_of="2026-02-03T06:00:00+01:00")
    assert found.end == datetime(2026, 2, 3, 5, 0, tzinfo=UTC) and found.rule == "as_of"
    scheduled = _context("scheduled", start=NIGHTLY, end=NIGHTLY, logical_date=NIGHTLY, params={"as_of": "2026-02-01"})
    assert data_window_end(scheduled).end == datetime(2026, 2, 1, tzinfo=UTC)
    # an empty Param (the factory's default) is "not set"; so is an as_of template that rendered empty
    assert data_window_end(_manual_ui_run(_dag("0 2 * * *"), params={"as_of": ""}), as_of="  ").rule == "cron_tick"
    with pytest.raises(AirflowFailException, match="not an ISO date"):
        data_window_end(ctx, as_of="yesterday")


# -------------------------------------------------------------------------------------- scheduled


@pytest.mark.parametrize("run_type", ["scheduled", "backfill"])
def test_scheduled_and_backfill_runs_use_their_data_interval_end(run_type):
    end = NIGHTLY
    ctx = _context(run_type, start=end - timedelta(days=1), end=end, logical_date=end, dag=_dag("0 2 * * *"))
    found = data_window_end(ctx)
    assert (found.end, found.rule) == (end, "scheduled")
    assert interval(ctx) == (end - timedelta(days=1), end)


# ---------------------------------------------------------------------------- manual runs of cron DAGs


def test_manual_ui_run_of_a_cron_dag_ends_at_the_last_tick_not_at_the_click(caplog):
    ctx = _manual_ui_run(_dag("0 2 * * *"))
    found = data_window_end(ctx)
    assert (found.end, found.rule) == (NIGHTLY, "cron_tick")
    assert "0 2 * * *" in found.detail and "logical date" in found.detail
    # validation reads the end through interval(): the same instant, with start = end
    assert interval(ctx) == (NIGHTLY, NIGHTLY)
    # and the rule is logged
    with caplog.at_level("INFO", logger="gd_provider.operators._common"):
        data_window_end(ctx)
    assert "rule cron_tick" in caplog.text


def test_manual_run_without_logical_date_uses_run_after_and_a_tick_is_its_own_last_tick():
    found = data_window_end(_manual_ui_run(_dag("@daily"), with_logical_date=False))
    assert found.end == datetime(2026, 3, 10, tzinfo=UTC) and "run_after" in found.detail
    on_tick = _context("manual", start=NIGHTLY, end=NIGHTLY, logical_date=NIGHTLY, dag=_dag("0 2 * * *"))
    assert data_window_end(on_tick).end == NIGHTLY


def test_cron_ticks_follow_the_timetable_timezone_and_the_latest_of_several_crons():
    berlin = _dag(CronTriggerTimetable("0 2 * * *", timezone="Europe/Berlin"))
    # 14:37 UTC = 15:37 in Berlin (CET): the last 02:00 Berlin tick is 01:00 UTC
    assert data_window_end(_manual_ui_run(berlin)).end == datetime(2026, 3, 10, 1, 0, tzinfo=UTC)
    # summer time: 02:00 CEST = 00:00 UTC
    assert last_cron_tick("0 2 * * *", "Europe/Berlin", datetime(2026, 7, 1, 12, tzinfo=UTC)) == datetime(
        2026, 7, 1, 0, 0, tzinfo=UTC
    )
    several = _dag(MultipleCronTriggerTimetable("0 2 * * *", "0 12 * * *", timezone="UTC"))
    assert data_window_end(_manual_ui_run(several)).end == datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    # assets OR a time schedule: a manual run goes by the time schedule
    either = _dag(AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 2 * * *", timezone="UTC"), assets=[CARD]))
    assert data_window_end(_manual_ui_run(either)).end == NIGHTLY


def test_operator_triggered_run_of_a_cron_dag_is_aligned_too():
    ctx = _context("operator_triggered", start=TRIGGERED, end=TRIGGERED, logical_date=TRIGGERED,
                   dag=_dag("0 2 * * *"))
    assert data_window_end(ctx).end == NIGHTLY


# --------------------------------------------------------------------------------- asset-triggered


def test_asset_triggered_run_ends_where_the_triggering_materialization_ended():
    mid = datetime(2026, 3, 9, tzinfo=UTC)
    events = TriggeringAssetEventsAccessor.build([
        _event(CARD, _through(mid)),
        _event(CARD, _through(datetime(2026, 3, 10, tzinfo=UTC)), alias="feast_materialized_views"),
        _event(MERCHANT, _through(datetime(2026, 3, 10, tzinfo=UTC)), alias="feast_materialized_views"),
    ])
    queued = datetime(2026, 3, 10, 0, 6, 30, tzinfo=UTC)
    ctx = _context("asset_triggered", run_after=queued, dag=_dag([CARD, MERCHANT]), events=events)
    found = data_window_end(ctx)
    # the latest event per view, the earliest over the views: never the queue time
    assert (found.end, found.rule) == (datetime(2026, 3, 10, tzinfo=UTC), "asset_events")
    assert CARD.uri in found.detail and MERCHANT.uri in found.detail

    older_merchant = TriggeringAssetEventsAccessor.build([
        _event(CARD, _through(datetime(2026, 3, 10, tzinfo=UTC))),
        _event(MERCHANT, {"interval": [mid.isoformat(), (mid + timedelta(hours=6)).isoformat()]}),
    ])
    ctx = _context("asset_triggered", run_after=queued, dag=_dag([CARD, MERCHANT]), events=older_merchant)
    assert data_window_end(ctx).end == mid + timedelta(hours=6)


def test_asset_triggered_run_without_materialization_extras_fails_at_once():
    events = TriggeringAssetEventsAccessor.build([_event(CARD, {"note": "hand-made event"})])
    ctx = _context("asset_triggered", run_after=TRIGGERED, dag=_dag([CARD]), events=events)
    with pytest.raises(AirflowFailException, match="as_of"):
        data_window_end(ctx)
    ctx["params"] = {"as_of": "2026-03-09"}
    assert data_window_end(ctx).end == datetime(2026, 3, 9, tzinfo=UTC)


# ----------------------------------------------------------------------------- other runs, failures


def test_manual_run_of_an_asset_scheduled_dag_needs_as_of():
    ctx = _manual_ui_run(_dag([CARD, MERCHANT]))
    with pytest.raises(AirflowFailException, match="asset-scheduled DAG .* Param as_of"):
        data_window_end(ctx)


def test_dag_without_schedule_uses_the_chosen_logical_date_and_fails_without_one():
    chosen = datetime(2026, 2, 20, tzinfo=UTC)
    ctx = _context("manual", start=chosen, end=chosen, logical_date=chosen, run_after=TRIGGERED, dag=_dag(None))
    assert data_window_end(ctx)[:2] == (chosen, "run_interval")
    no_date = _context("manual", run_after=TRIGGERED, dag=_dag(None))
    with pytest.raises(AirflowFailException, match="no logical date"):
        data_window_end(no_date)


def test_an_unreadable_cron_timetable_fails_clearly():
    ctx = _manual_ui_run(SimpleNamespace(timetable=SimpleNamespace(expression="not a cron", timezone="UTC")))
    with pytest.raises(AirflowFailException, match="last schedule tick"):
        data_window_end(ctx)


def test_sensor_and_retrieval_ask_for_the_same_end(monkeypatch):
    """The sensor checks freshness through the end retrieval trains up to (both via data_window_end)."""
    import gd_provider.core.features as core
    import gd_provider.hooks.feast as hook
    from gd_provider.operators.features import FeastHistoricalFeaturesOperator
    from gd_provider.sensors.features import FeatureFreshnessSensor

    seen = {}

    class Stop(Exception):
        pass

    def fake_check(store, end, **kwargs):
        seen["sensor"] = end
        raise Stop

    def fake_entities(self, start, end, now=None):
        seen["retrieval"] = (start, end)
        raise Stop

    monkeypatch.setattr(core, "check_freshness", fake_check)
    monkeypatch.setattr(hook.FeastHook, "get_conn", lambda self: object())
    monkeypatch.setattr(FeastHistoricalFeaturesOperator, "_entity_frame", fake_entities)
    ctx = _manual_ui_run(_dag("0 2 * * *"))
    with pytest.raises(Stop):
        FeatureFreshnessSensor(task_id="features_fresh", feature_views=["card_stats"]).poke(ctx)
    retrieve = FeastHistoricalFeaturesOperator(
        task_id="retrieve", entity_callable=lambda s, e: None, entity_keys=["card_id"], label_column="y",
        lookback=timedelta(days=3), as_of="",
    )
    with pytest.raises(Stop):
        retrieve.execute(ctx)
    assert seen == {"sensor": NIGHTLY, "retrieval": (NIGHTLY - timedelta(days=3), NIGHTLY)}


@pytest.mark.parametrize("unset", ["", "  ", "None", "null", None])
def test_an_as_of_rendered_from_a_missing_value_means_not_set(unset):
    end = datetime(2026, 3, 1, tzinfo=UTC)
    run = SimpleNamespace(dag_id="d", run_id="r", run_type="scheduled", data_interval_end=end,
                          data_interval_start=end, logical_date=end, run_after=end)
    chosen = data_window_end({"dag_run": run, "params": {"as_of": unset}}, as_of=unset)
    assert (chosen.end, chosen.rule) == (end, "scheduled")


def test_a_timetable_that_cannot_be_read_fails_naming_as_of():
    dag = SimpleNamespace(timetable=SimpleNamespace(expression="every night", timezone="UTC"))
    with pytest.raises(AirflowFailException, match=r"could not find the last schedule tick .*Param as_of"):
        data_window_end(_manual_ui_run(dag))
