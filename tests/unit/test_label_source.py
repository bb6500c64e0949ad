"""Where a label source is: relative to the project home, absolute anywhere, file:// URIs; other schemes
refused saying why (core.features.resolve_label_source, and the retrieval operator's use of it)."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest

from gd_provider.core.features import (
    FeatureRetrievalError,
    label_source_window_stats,
    read_label_source,
    resolve_label_source,
)

DAY = datetime(2026, 1, 5, tzinfo=UTC)


@pytest.fixture
def labels_outside(tmp_path):
    """A folder of day files outside the project home (a shared mount, say)."""
    folder = tmp_path / "mnt" / "sales data"
    folder.mkdir(parents=True)
    for i in range(3):
        ts = pd.Timestamp(DAY) + pd.Timedelta(days=i, hours=21)
        pd.DataFrame({"event_timestamp": [ts, ts], "store_id": [1, 2], "units_sold": [3.0, 4.0]}).to_parquet(
            folder / f"{ts:%Y-%m-%d}.parquet", index=False)
    return folder


def test_relative_paths_are_under_the_home(gd_home):
    (gd_home / "demand_repo" / "data" / "sales").mkdir(parents=True)
    assert resolve_label_source("demand_repo/data/sales", gd_home) == gd_home.resolve() / "demand_repo/data/sales"
    assert resolve_label_source("demand_repo/../demand_repo/data/sales", gd_home) == (
        gd_home.resolve() / "demand_repo/data/sales")


def test_absolute_paths_and_file_uris_are_read_outside_the_home(gd_home, labels_outside):
    assert not labels_outside.is_relative_to(gd_home)
    uri = labels_outside.as_uri()  # file:///.../mnt/sales%20data
    assert "%20" in uri
    for given in (str(labels_outside), uri, f"file://localhost{labels_outside}", f"file:{labels_outside}"):
        path = resolve_label_source(given, gd_home)
        assert path == labels_outside.resolve(), given
        df = read_label_source(given, DAY, DAY + pd.Timedelta(days=2))
        assert len(df) == 4 and str(df["event_timestamp"].dt.tz) == "UTC"
    stats = label_source_window_stats(uri, DAY, DAY + pd.Timedelta(days=2), "event_timestamp")
    assert stats["rows_in_window"] == 4 and stats["rows_after_window"] == 2


def test_a_home_relative_tilde_path_is_expanded(gd_home, labels_outside, monkeypatch):
    monkeypatch.setenv("HOME", str(labels_outside.parent))
    assert resolve_label_source("~/sales data", gd_home) == labels_outside.resolve()


@pytest.mark.parametrize(("given", "why"), [
    ("s3://bucket/sales", r"s3:// URIs are not supported: .*Mount or sync .*entity_sql"),
    ("gs://bucket/sales", r"gs:// URIs are not supported"),
    ("https://example.com/sales.parquet", r"https:// URIs are not supported"),
    ("file://fileserver/share/sales", r"file:// URI with a host \('fileserver'\).*three slashes"),
    ("../outside", r"resolves to .*outside the project home .*give an absolute path"),
    ("", r"label source is empty"),
])
def test_refused_sources_say_why(gd_home, given, why):
    with pytest.raises(FeatureRetrievalError, match=why):
        resolve_label_source(given, gd_home)


def test_read_functions_refuse_remote_uris_the_same_way():
    with pytest.raises(FeatureRetrievalError, match="s3:// URIs are not supported"):
        read_label_source("s3://bucket/sales", None, None)
    with pytest.raises(FeatureRetrievalError, match="s3:// URIs are not supported"):
        label_source_window_stats("s3://bucket/sales", None, None, "event_timestamp")


def test_missing_sources_name_what_was_looked_for(gd_home, tmp_path):
    with pytest.raises(FeatureRetrievalError, match=(
        r"label source 'sales' \(relative: resolved against the project home .*\): .*/sales does not exist")):
        resolve_label_source("sales", gd_home)
    with pytest.raises(FeatureRetrievalError, match=r"label source '.*/nowhere': .*nowhere does not exist"):
        resolve_label_source(str(tmp_path / "nowhere"), gd_home)


def test_the_retrieval_operator_reads_an_absolute_label_source(gd_home, labels_outside):
    from gd_provider.operators.features import FeastHistoricalFeaturesOperator

    for given in (str(labels_outside), labels_outside.as_uri()):
        op = FeastHistoricalFeaturesOperator(task_id="retrieve", label_source=given, feature_service="svc",
                                             entity_keys=["store_id"], label_column="units_sold")
        df, stats = op._entity_frame(DAY, DAY + pd.Timedelta(days=3))
        assert len(df) == 6 and stats["rows_in_window"] == 6
    op = FeastHistoricalFeaturesOperator(task_id="retrieve", label_source="s3://bucket/sales", feature_service="svc",
                                         entity_keys=["store_id"], label_column="units_sold")
    with pytest.raises(FeatureRetrievalError, match="s3:// URIs are not supported"):
        op._entity_frame(DAY, DAY + pd.Timedelta(days=3))
