"""Pure helpers behind the Feast sensor and operators: freshness reports, entity windows, SQL/callable sources."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from gd_provider.core.features import (
    FeatureRetrievalError,
    FreshnessReport,
    check_entity_window,
    entity_frame_from_callable,
    entity_frame_from_sql,
)

END = datetime(2026, 1, 10, tzinfo=UTC)
START = END - timedelta(days=3)


def test_freshness_report_names_each_stale_view_and_its_watermark():
    report = FreshnessReport(
        through=END,
        watermarks={"a": END, "b": END - timedelta(days=1), "c": None, "d": END + timedelta(hours=1)},
    )
    assert not report.fresh
    assert report.stale == ["b", "c"]
    msg = report.message()
    assert "2 of 4 feature views not materialized through 2026-01-10T00:00:00+00:00" in msg
    assert "b (materialized through 2026-01-09T00:00:00+00:00)" in msg
    assert "c (never materialized)" in msg
    assert "a (" not in msg and "d (" not in msg
    assert report.to_dict() == {
        "through": "2026-01-10T00:00:00+00:00",
        "fresh": False,
        "stale": ["b", "c"],
        "watermarks": {
            "a": "2026-01-10T00:00:00+00:00",
            "b": "2026-01-09T00:00:00+00:00",
            "c": None,
            "d": "2026-01-10T01:00:00+00:00",
        },
    }
    fresh = FreshnessReport(through=END, watermarks={"a": END})
    assert fresh.fresh and fresh.stale == [] and "all 1 feature views" in fresh.message()


def _frame(*timestamps) -> pd.DataFrame:
    return pd.DataFrame(
        {"k": range(len(timestamps)), "event_timestamp": pd.to_datetime(list(timestamps), utc=True)}
    )


def test_check_entity_window_accepts_half_open_window_and_reports_outsiders():
    check_entity_window(_frame(START, END - timedelta(microseconds=1)), START, END, "event_timestamp", "src")
    with pytest.raises(FeatureRetrievalError) as info:
        check_entity_window(
            _frame(START, END, END + timedelta(days=1), START - timedelta(seconds=1)),
            START,
            END,
            "event_timestamp",
            "entity_sql",
        )
    msg = str(info.value)
    assert msg.startswith("entity_sql: 3 of 4 entity rows fall outside the window")
    assert "2 at or after the window end 2026-01-10T00:00:00+00:00" in msg
    assert "1 before the window start 2026-01-07T00:00:00+00:00" in msg


def test_entity_sql_binds_start_and_end_only_when_used(tmp_path):
    path = tmp_path / "rows.parquet"
    pd.DataFrame(
        {
            "k": [1, 2, 3],
            # naive timestamps in the file: read as UTC
            "event_timestamp": pd.to_datetime(["2026-01-06", "2026-01-08", "2026-01-12"]),
        }
    ).to_parquet(path)
    sql = f"SELECT * FROM read_parquet('{path}') WHERE event_timestamp >= $start AND event_timestamp < $end"
    df = entity_frame_from_sql(sql, START, END)
    assert df["k"].tolist() == [2]
    assert "UTC" in str(df["event_timestamp"].dtype)
    everything = entity_frame_from_sql(f"SELECT * FROM read_parquet('{path}') ORDER BY k", START, END)
    assert everything["k"].tolist() == [1, 2, 3]
    with pytest.raises(FeatureRetrievalError, match=r"unknown parameters \['day'\]"):
        entity_frame_from_sql("SELECT $day AS event_timestamp", START, END)
    with pytest.raises(FeatureRetrievalError, match="exactly one statement"):
        entity_frame_from_sql("SELECT 1; SELECT 2", START, END)
    with pytest.raises(FeatureRetrievalError, match="entity_sql failed"):
        entity_frame_from_sql("SELECT * FROM read_parquet('/no/such/file.parquet')", START, END)
    with pytest.raises(FeatureRetrievalError, match="no timestamp column 'event_timestamp'"):
        entity_frame_from_sql("SELECT 1 AS k", START, END)


def test_entity_callable_gets_the_window_and_must_return_a_frame():
    seen = {}

    def rows(start, end):
        seen["window"] = (start, end)
        return pd.DataFrame({"k": [1], "event_timestamp": ["2026-01-08T00:00:00Z"]})

    df = entity_frame_from_callable(rows, START, END)
    assert seen["window"] == (START, END)
    assert df["event_timestamp"].iloc[0] == pd.Timestamp("2026-01-08", tz="UTC")
    with pytest.raises(FeatureRetrievalError, match="must return a pandas DataFrame, got list"):
        entity_frame_from_callable(lambda s, e: [], START, END)
    with pytest.raises(FeatureRetrievalError, match="failed: ZeroDivisionError"):
        entity_frame_from_callable(lambda s, e: 1 / 0, START, END)
    with pytest.raises(FeatureRetrievalError, match="not datetime-like"):
        entity_frame_from_callable(lambda s, e: pd.DataFrame({"event_timestamp": ["soon"]}), START, END)
