"""Rows a retrieval leaves out without a trace are judged by validation (issue 13).

A label source and a feature view each get rows stamped in the future (a producer's wrong clock): the
point-in-time join never picks them, so the dataset itself looks clean. The retrieval counts them in its
manifest; the validation gate fails naming each, or reports them with ``dropped_rows="warn"``. Rows after
the window end that are not in the future (a rerun of an older night) are only counted.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from airflow.sdk.exceptions import AirflowFailException

from gd_provider.demo import schema
from gd_provider.demo.feature_repo import create_feature_repo
from gd_provider.demo.generator import GeneratorConfig, generate, write_demo_data
from gd_provider.operators.features import FeastHistoricalFeaturesOperator
from gd_provider.operators.validation import DataValidationOperator
from tests.integration.test_feast_operators import context

pytestmark = pytest.mark.integration

CONFIG = GeneratorConfig(seed=5, days=8, n_cards=80, n_merchants=10, txns_per_day=100)
RETRIEVAL = {
    "feature_service": schema.FEATURE_SERVICE, "entity_keys": list(schema.ENTITY_KEYS),
    "timestamp_column": schema.TIMESTAMP, "label_column": schema.LABEL,
    "sort_by": [schema.TIMESTAMP, schema.TRANSACTION_ID], "lookback": timedelta(days=3),
}


def day(n: int) -> datetime:
    return (CONFIG.start_timestamp + pd.Timedelta(days=n)).to_pydatetime()


@pytest.fixture
def planted(gd_home):
    """Demo data whose card_stats source and label folder hold a few rows stamped 30 days from now."""
    data = generate(CONFIG)
    paths = write_demo_data(gd_home / "data", data)
    future = pd.Timestamp(datetime.now(UTC) + timedelta(days=30))
    cards = pd.read_parquet(paths["card_stats"])
    late = cards.head(4).copy()
    late[schema.TIMESTAMP] = future
    pd.concat([cards, late], ignore_index=True).to_parquet(paths["card_stats"], index=False)
    create_feature_repo(gd_home / "feature_repo", gd_home / "data")
    labels = gd_home / "labels"
    shutil.copytree(paths["transactions"], labels)
    tx = pd.read_parquet(labels / sorted(p.name for p in labels.iterdir())[0])
    wrong = tx.head(3).copy()
    wrong[schema.TIMESTAMP] = future
    wrong[schema.TRANSACTION_ID] = wrong[schema.TRANSACTION_ID].astype(str) + "_late"
    wrong.to_parquet(labels / "late.parquet", index=False)
    return {"labels": "labels", "clean_labels": paths["transactions"]}


def _validate(manifest: dict, task_id: str, **kwargs) -> DataValidationOperator:
    return DataValidationOperator(task_id=task_id, dataset=manifest, task="binary", log_to_mlflow=False, **kwargs)


def test_future_rows_are_counted_by_retrieval_and_fail_validation_naming_them(planted):
    retrieve = FeastHistoricalFeaturesOperator(task_id="retrieve", label_source=planted["labels"], **RETRIEVAL)
    manifest = retrieve.execute(context(day(5), day(6)))
    stats = manifest["entity_source_stats"]
    assert stats["rows_in_future"] == 3
    # days 6 and 7 are after the window but not in the future: later data, counted, not judged
    assert stats["rows_after_window"] == 2 * CONFIG.txns_per_day + 3
    features = manifest["feature_source_stats"]
    assert features[schema.CARD_VIEW]["rows_in_future"] == 4
    assert features[schema.MERCHANT_VIEW]["rows_in_future"] == 0
    assert manifest["retrieved_at"]
    # the dataset itself is clean: the join never picked a future row
    assert manifest["rows"] == 3 * CONFIG.txns_per_day

    with pytest.raises(AirflowFailException) as err:
        _validate(manifest, "validate").execute(context(day(5), day(6)))
    text = str(err.value)
    assert ("gd_no_rows_in_future(card_stats) [window:features_in_future:card_stats]: 4 rows of feature view "
            "'card_stats' stamped after the retrieval") in text
    assert "200 label rows after the window end" in text  # later data: counted, not judged
    assert "3 label/entity rows stamped after the retrieval" in text
    assert "merchant_stats" not in text.split("expectations failed")[1].split("Note:")[0]

    result = _validate(manifest, "validate_warn", dropped_rows="warn").execute(context(day(5), day(6)))
    assert result["success"] is True
    assert any("later data" in n for n in result["notes"])


def test_a_clean_night_passes_the_window_checks_and_a_foreign_manifest_says_they_did_not_run(gd_home):
    data = generate(CONFIG)
    paths = write_demo_data(gd_home / "data", data)
    create_feature_repo(gd_home / "feature_repo", gd_home / "data")
    shutil.copytree(paths["transactions"], gd_home / "labels")
    retrieve = FeastHistoricalFeaturesOperator(task_id="retrieve", label_source="labels", **RETRIEVAL)
    manifest = retrieve.execute(context(day(5), day(6)))
    result = _validate(manifest, "validate").execute(context(day(5), day(6)))
    assert result["success"] is True
    # counted: 1 label check + 1 timestamp check + 1 per feature view, next to the task's label checks
    report = pd.read_json(result["report"]["json"], typ="series")
    checks = [r["check"] for r in report["results"] if str(r["check"] or "").startswith("window:")]
    assert sorted(checks) == ["window:features_in_future:card_stats", "window:features_in_future:merchant_stats",
                              "window:labels_in_future", "window:labels_without_timestamp"]
    foreign = {k: v for k, v in manifest.items() if k not in ("entity_source_stats", "feature_source_stats")}
    result = _validate(foreign, "validate_foreign").execute(context(day(5), day(6)))
    assert any(n.startswith("window checks NOT RUN") for n in result["notes"])
