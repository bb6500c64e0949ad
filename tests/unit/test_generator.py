from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gd_provider.demo import schema
from gd_provider.demo.generator import (
    CORRUPTION_KINDS,
    FEATURE_DTYPES,
    TRANSACTION_COLUMNS,
    GeneratorConfig,
    corrupt,
    generate,
    inject_drift,
    transactions_day_path,
    write_demo_data,
)

SMALL = GeneratorConfig(seed=3, days=10, n_cards=300, n_merchants=30, txns_per_day=400)


@pytest.fixture(scope="module")
def default_data():
    return generate(GeneratorConfig())


@pytest.fixture(scope="module")
def small_data():
    return generate(SMALL)


def _day(ts: pd.Series) -> pd.Series:
    return ts.dt.floor("D")


def test_shapes_and_dtypes(small_data):
    tx, cs, ms = small_data.transactions, small_data.card_stats, small_data.merchant_stats
    assert tuple(tx.columns) == TRANSACTION_COLUMNS
    assert len(tx) == SMALL.days * SMALL.txns_per_day
    assert tx[schema.TRANSACTION_ID].is_unique
    expected = {
        "card_id": "int64",
        "merchant_id": "int64",
        "event_timestamp": "datetime64[ns, UTC]",
        "amount": "float64",
        "hour_of_day": "int64",
        "is_foreign": "int64",
        "is_online": "int64",
        "distance_from_home_km": "float64",
        "is_fraud": "int64",
    }
    assert {c: str(tx[c].dtype) for c in expected} == expected
    assert tx[schema.TRANSACTION_ID].map(type).eq(str).all()
    assert set(tx["channel"]) <= set(schema.CHANNELS)
    assert set(tx[schema.LABEL]) == {0, 1}
    assert set(tx["is_foreign"]) <= {0, 1} and set(tx["is_online"]) <= {0, 1}
    assert (tx["is_online"] == (tx["channel"] == "online")).all()
    assert (tx["hour_of_day"] == tx[schema.TIMESTAMP].dt.hour).all()
    assert (tx["amount"] > 0).all() and (tx["distance_from_home_km"] >= 0).all()
    assert tx["card_id"].between(1, SMALL.n_cards).all()
    assert tx["merchant_id"].between(1, SMALL.n_merchants).all()

    assert list(cs.columns) == ["card_id", "event_timestamp", "created", *schema.CARD_FEATURES]
    assert len(cs) == SMALL.n_cards * SMALL.days
    assert list(ms.columns) == [
        "merchant_id",
        "event_timestamp",
        "created",
        *schema.MERCHANT_NUMERIC,
        *schema.MERCHANT_CATEGORICAL,
    ]
    assert len(ms) == SMALL.n_merchants * SMALL.days
    for frame in (cs, ms):
        for col, dtype in FEATURE_DTYPES.items():
            if col in frame:
                assert str(frame[col].dtype) == ("object" if dtype == "str" else dtype), col
        assert str(frame["event_timestamp"].dtype) == "datetime64[ns, UTC]"
        assert (frame["created"] == frame["event_timestamp"]).all()
        assert not frame.isna().any().any()
    assert set(ms["merchant_category"]) <= set(schema.MERCHANT_CATEGORIES)
    # a merchant keeps its category
    assert (ms.groupby("merchant_id")["merchant_category"].nunique() == 1).all()


def test_snapshots_daily_at_midnight_one_per_entity(small_data):
    start = GeneratorConfig().start_timestamp
    days = pd.date_range(start, periods=SMALL.days, freq="D")
    for frame, key, n in (
        (small_data.card_stats, "card_id", SMALL.n_cards),
        (small_data.merchant_stats, "merchant_id", SMALL.n_merchants),
    ):
        ts = frame["event_timestamp"]
        assert (ts == ts.dt.floor("D")).all()
        assert not frame.duplicated([key, "event_timestamp"]).any()
        assert list(pd.DatetimeIndex(sorted(ts.unique()))) == list(days)
        assert (frame.groupby("event_timestamp")[key].nunique() == n).all()


def test_timestamps_span_the_configured_days(small_data):
    tx = small_data.transactions
    ts = tx[schema.TIMESTAMP]
    assert ts.min() >= SMALL.start_timestamp
    assert ts.max() < SMALL.end_timestamp
    assert _day(ts).nunique() == SMALL.days
    assert (tx.groupby(_day(ts)).size() == SMALL.txns_per_day).all()
    assert ts.is_monotonic_increasing


def test_same_seed_same_data_other_seed_other_data(small_data):
    again = generate(SMALL)
    pd.testing.assert_frame_equal(small_data.transactions, again.transactions)
    pd.testing.assert_frame_equal(small_data.card_stats, again.card_stats)
    pd.testing.assert_frame_equal(small_data.merchant_stats, again.merchant_stats)
    other = generate(
        GeneratorConfig(seed=SMALL.seed + 1, days=10, n_cards=300, n_merchants=30, txns_per_day=400)
    )
    assert not other.transactions["amount"].equals(small_data.transactions["amount"])


def test_fraud_rate_near_target(default_data):
    rate = default_data.transactions[schema.LABEL].mean()
    assert 0.02 <= rate <= 0.04
    high = generate(GeneratorConfig(seed=11, days=10, target_fraud_rate=0.08))
    assert 0.065 <= high.transactions[schema.LABEL].mean() <= 0.095


def test_card_stats_are_computed_from_earlier_days_only(default_data):
    tx, cs, ms = default_data.transactions, default_data.card_stats, default_data.merchant_stats
    start = GeneratorConfig().start_timestamp
    snap = start + pd.Timedelta(days=40)
    window = tx[(tx[schema.TIMESTAMP] >= snap - pd.Timedelta(days=7)) & (tx[schema.TIMESTAMP] < snap)]
    expected = window.groupby("card_id").agg(
        card_txn_count_7d=("amount", "size"),
        card_avg_amount_7d=("amount", "mean"),
        card_distinct_merchants_7d=("merchant_id", "nunique"),
    )
    got = cs[cs["event_timestamp"] == snap].set_index("card_id")
    got_active = got.loc[expected.index]
    assert (got_active["card_txn_count_7d"] == expected["card_txn_count_7d"]).all()
    assert (got_active["card_distinct_merchants_7d"] == expected["card_distinct_merchants_7d"]).all()
    np.testing.assert_allclose(got_active["card_avg_amount_7d"], expected["card_avg_amount_7d"], atol=1e-3)
    inactive = got.drop(expected.index)
    assert (inactive["card_txn_count_7d"] == 0).all() and (inactive["card_avg_amount_7d"] == 0).all()

    m_window = tx[(tx[schema.TIMESTAMP] >= snap - pd.Timedelta(days=30)) & (tx[schema.TIMESTAMP] < snap)]
    m_expected = m_window.groupby("merchant_id").agg(
        merchant_txn_count_30d=("amount", "size"), merchant_fraud_rate_30d=(schema.LABEL, "mean")
    )
    m_got = ms[ms["event_timestamp"] == snap].set_index("merchant_id").loc[m_expected.index]
    assert (m_got["merchant_txn_count_30d"] == m_expected["merchant_txn_count_30d"]).all()
    np.testing.assert_allclose(
        m_got["merchant_fraud_rate_30d"], m_expected["merchant_fraud_rate_30d"], atol=1e-5
    )


def test_label_is_learnable_on_held_out_days(default_data):
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    tx = default_data.transactions.assign(snap=lambda d: _day(d[schema.TIMESTAMP]))
    cs = default_data.card_stats.drop(columns="created").rename(columns={"event_timestamp": "snap"})
    ms = default_data.merchant_stats.drop(columns="created").rename(columns={"event_timestamp": "snap"})
    df = tx.merge(cs, on=["card_id", "snap"], how="left").merge(ms, on=["merchant_id", "snap"], how="left")
    assert len(df) == len(tx)
    num, cat = list(schema.NUMERIC_FEATURES), list(schema.CATEGORICAL_FEATURES)
    cut = GeneratorConfig().start_timestamp + pd.Timedelta(days=40)
    train, test = df[df["snap"] < cut], df[df["snap"] >= cut]
    model = make_pipeline(
        ColumnTransformer(
            [("num", StandardScaler(), num), ("cat", OneHotEncoder(handle_unknown="ignore"), cat)]
        ),
        LogisticRegression(max_iter=1000),
    )
    model.fit(train[num + cat], train[schema.LABEL])
    auc = roc_auc_score(test[schema.LABEL], model.predict_proba(test[num + cat])[:, 1])
    assert auc >= 0.8, auc


@pytest.mark.parametrize("kind", CORRUPTION_KINDS)
def test_corrupt_kinds(small_data, kind):
    tx = small_data.transactions
    before = tx.copy()
    bad = corrupt(tx, kind, seed=1)
    pd.testing.assert_frame_equal(tx, before)  # the input is not modified
    if kind == "nulls":
        share = bad["amount"].isna().mean()
        assert 0.2 <= share <= 0.4
    elif kind == "negative_amount":
        assert (bad["amount"] < 0).mean() > 0.05
    elif kind == "single_class":
        assert set(bad[schema.LABEL]) == {0} and len(bad) == len(tx)
    elif kind == "missing_column":
        assert "distance_from_home_km" not in bad and len(bad.columns) == len(tx.columns) - 1
    elif kind == "duplicates":
        assert len(bad) > len(tx) and bad.duplicated().sum() == len(bad) - len(tx)
        assert bad[schema.TRANSACTION_ID].duplicated().any()
    elif kind == "label_out_of_range":
        assert (bad[schema.LABEL] == 2).any() and set(bad[schema.LABEL]) <= {0, 1, 2}
        assert bad[schema.LABEL].dtype == np.int64
    pd.testing.assert_frame_equal(corrupt(tx, kind, seed=1), bad)


def test_corrupt_unknown_kind_names_the_valid_ones(small_data):
    with pytest.raises(ValueError, match="valid kinds: nulls, negative_amount"):
        corrupt(small_data.transactions, "gremlins", seed=0)


def test_drift_knob(small_data):
    tx = small_data.transactions
    pd.testing.assert_frame_equal(inject_drift(tx, 0.0, seed=1), tx)
    drifted = inject_drift(tx, 1.0, seed=1)
    pd.testing.assert_frame_equal(drifted, inject_drift(tx, 1.0, seed=1))
    assert drifted["amount"].median() > 1.3 * tx["amount"].median()
    assert drifted["distance_from_home_km"].median() > 1.5 * tx["distance_from_home_km"].median()
    assert drifted["is_online"].mean() > tx["is_online"].mean() + 0.15
    assert (drifted["is_online"] == (drifted["channel"] == "online")).all()
    assert drifted[schema.LABEL].equals(tx[schema.LABEL])
    assert list(drifted.columns) == list(tx.columns) and drifted.dtypes.equals(tx.dtypes)
    mild = inject_drift(tx, 0.2, seed=1)
    assert tx["amount"].median() < mild["amount"].median() < drifted["amount"].median()
    with pytest.raises(ValueError):
        inject_drift(tx, -1.0, seed=1)


def test_write_demo_data(tmp_path, small_data):
    paths = write_demo_data(tmp_path / "data", small_data)
    assert set(paths) == {"card_stats", "merchant_stats", "transactions"}
    files = sorted((tmp_path / "data" / "transactions").glob("*.parquet"))
    assert len(files) == SMALL.days
    assert files[0].name == "2026-01-01.parquet"
    assert transactions_day_path(tmp_path / "data", "2026-01-01") == files[0]
    back = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    pd.testing.assert_frame_equal(back, small_data.transactions)
    pd.testing.assert_frame_equal(pd.read_parquet(paths["card_stats"]), small_data.card_stats)
    pd.testing.assert_frame_equal(pd.read_parquet(paths["merchant_stats"]), small_data.merchant_stats)
    # rewriting with fewer days leaves no stale day files behind
    shorter = generate(GeneratorConfig(seed=3, days=4, n_cards=50, n_merchants=10, txns_per_day=50))
    write_demo_data(tmp_path / "data", shorter)
    assert len(list((tmp_path / "data" / "transactions").glob("*.parquet"))) == 4
