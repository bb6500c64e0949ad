from __future__ import annotations

import runpy
from datetime import UTC, datetime

import pandas as pd
import pytest

from gd_provider.core.data import read_dataset
from gd_provider.core.features import FeatureRetrievalError, read_label_source, retrieve_training_set
from gd_provider.demo import schema
from gd_provider.demo.feature_repo import create_feature_repo, feast_objects
from gd_provider.demo.generator import GeneratorConfig, generate, write_demo_data

pytestmark = pytest.mark.integration

CONFIG = GeneratorConfig(seed=5, days=10, n_cards=200, n_merchants=20, txns_per_day=300)
KEYS = list(schema.ENTITY_KEYS)
CARD_COLS = list(schema.CARD_FEATURES)
MERCHANT_COLS = list(schema.MERCHANT_NUMERIC + schema.MERCHANT_CATEGORICAL)


def _day(n: int) -> datetime:
    return (CONFIG.start_timestamp + pd.Timedelta(days=n)).to_pydatetime()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("feast_demo")
    data = generate(CONFIG)
    paths = write_demo_data(root / "data", data)
    create_feature_repo(root / "repo", root / "data")
    repo = create_feature_repo(root / "repo", root / "data")  # idempotent
    from feast import FeatureStore

    return {
        "root": root,
        "repo": repo,
        "paths": paths,
        "data": data,
        "store": FeatureStore(repo_path=str(repo)),
    }


def _retrieve(demo, entity_df, name, **kwargs):
    args = dict(
        out_uri=str(demo["root"] / "out" / f"{name}.parquet"),
        entity_keys=KEYS,
        timestamp_column=schema.TIMESTAMP,
        label_column=schema.LABEL,
        data_interval=None,
        sort_by=[schema.TIMESTAMP, schema.TRANSACTION_ID],
    )
    args.update(kwargs)
    if "features" not in args and "feature_service" not in args:
        args["feature_service"] = schema.FEATURE_SERVICE
    return retrieve_training_set(demo["store"], entity_df, **args)


def test_repo_is_registered_and_definitions_match(demo):
    store, repo = demo["store"], demo["repo"]
    assert (repo / "feature_store.yaml").exists() and (repo / "registry.db").exists()
    views = {v.name: v for v in store.list_feature_views()}
    assert set(views) == {schema.CARD_VIEW, schema.MERCHANT_VIEW}
    assert [f.name for f in views[schema.CARD_VIEW].features] == CARD_COLS
    assert views[schema.CARD_VIEW].ttl == pd.Timedelta(days=2)
    assert views[schema.MERCHANT_VIEW].ttl == pd.Timedelta(days=7)
    assert {e.name for e in store.list_entities()} == {"card", "merchant"}
    service = store.get_feature_service(schema.FEATURE_SERVICE)
    assert {p.name for p in service.feature_view_projections} == {schema.CARD_VIEW, schema.MERCHANT_VIEW}
    # the generated definitions.py (what `feast apply` reads) builds the same objects
    ns = runpy.run_path(str(repo / "definitions.py"))
    expected = feast_objects(demo["root"] / "data")
    assert [ns[name] for name in ("card", "merchant", "card_stats", "merchant_stats", "fraud_model_v1")] == [
        expected[0],
        expected[1],
        expected[4],
        expected[5],
        expected[6],
    ]


def test_read_label_source_window(demo):
    tx_dir = demo["paths"]["transactions"]
    df = read_label_source(tx_dir, _day(2), _day(5))
    assert len(df) == 3 * CONFIG.txns_per_day
    assert df[schema.TIMESTAMP].min() >= _day(2) and df[schema.TIMESTAMP].max() < _day(5)
    assert str(df[schema.TIMESTAMP].dtype) == "datetime64[ns, UTC]"
    assert len(read_label_source(tx_dir, None, None)) == CONFIG.days * CONFIG.txns_per_day
    one_file = read_label_source(f"{tx_dir}/2026-01-03.parquet", datetime(2026, 1, 3, 12), None)
    assert (one_file[schema.TIMESTAMP].dt.hour >= 12).all() and len(one_file) > 0
    assert read_label_source(tx_dir, _day(30), _day(31)).empty
    with pytest.raises(FeatureRetrievalError, match="no/such/labels"):
        read_label_source(demo["root"] / "no" / "such" / "labels", None, None)


def test_retrieve_via_feature_service_is_point_in_time(demo):
    entity_df = read_label_source(demo["paths"]["transactions"], _day(2), _day(9))
    manifest = _retrieve(demo, entity_df, "service", data_interval=[_day(2).isoformat(), _day(9).isoformat()])
    out = read_dataset(manifest)

    # every entity row exactly once, with all of its columns
    assert manifest.rows == len(entity_df) == len(out)
    assert out[schema.TRANSACTION_ID].is_unique
    assert set(out[schema.TRANSACTION_ID]) == set(entity_df[schema.TRANSACTION_ID])
    assert list(out.columns) == list(entity_df.columns) + CARD_COLS + MERCHANT_COLS
    assert manifest.feature_refs == list(schema.FEAST_FEATURE_REFS)
    assert manifest.entity_keys == KEYS and manifest.label_column == schema.LABEL
    assert manifest.data_interval == [_day(2).isoformat(), _day(9).isoformat()]
    merged = out.merge(entity_df, on=schema.TRANSACTION_ID, suffixes=("", "_in"))
    for col in ("card_id", "merchant_id", "amount", schema.LABEL, schema.TIMESTAMP):
        assert (merged[col] == merged[f"{col}_in"]).all(), col
    assert not out[CARD_COLS + MERCHANT_COLS].isna().any().any()

    # point in time: each row carries the latest snapshot at or before its event time, within the TTL
    ordered = out.sort_values(schema.TIMESTAMP)
    for stats, key, cols, ttl in (
        (demo["data"].card_stats, "card_id", CARD_COLS, "2D"),
        (demo["data"].merchant_stats, "merchant_id", MERCHANT_COLS, "7D"),
    ):
        snaps = stats.rename(columns={schema.TIMESTAMP: "snapshot_ts"}).sort_values("snapshot_ts")
        expected = pd.merge_asof(
            ordered[[schema.TRANSACTION_ID, key, schema.TIMESTAMP]],
            snaps.drop(columns="created"),
            left_on=schema.TIMESTAMP,
            right_on="snapshot_ts",
            by=key,
            direction="backward",
            tolerance=pd.Timedelta(ttl),
        )
        assert (expected["snapshot_ts"] <= expected[schema.TIMESTAMP]).all()
        assert (expected["snapshot_ts"] == expected[schema.TIMESTAMP].dt.floor("D")).all()
        got = ordered.set_index(schema.TRANSACTION_ID)[cols]
        want = expected.set_index(schema.TRANSACTION_ID)[cols].loc[got.index]
        pd.testing.assert_frame_equal(got, want, check_dtype=False)


def test_ttl_and_boundaries(demo):
    tx = demo["data"].transactions.head(4).copy()
    tx[schema.TIMESTAMP] = [
        _day(0) - pd.Timedelta(seconds=1),  # before the first snapshot: nothing
        _day(3),  # exactly on a snapshot: that snapshot (<=)
        _day(CONFIG.days - 1) + pd.Timedelta(days=3),  # card TTL (2 days) expired, merchant (7 days) not
        _day(CONFIG.days - 1) + pd.Timedelta(days=8),  # both expired
    ]
    tx[schema.TRANSACTION_ID] = ["a", "b", "c", "d"]
    out = read_dataset(_retrieve(demo, tx, "ttl")).set_index(schema.TRANSACTION_ID)
    assert out.loc["a", CARD_COLS + MERCHANT_COLS].isna().all()
    cs = demo["data"].card_stats
    snap = cs[(cs["card_id"] == tx["card_id"].iloc[1]) & (cs[schema.TIMESTAMP] == _day(3))].iloc[0]
    assert out.loc["b", "card_txn_count_7d"] == snap["card_txn_count_7d"]
    assert out.loc["b", "card_age_days"] == snap["card_age_days"]
    assert out.loc["c", CARD_COLS].isna().all() and out.loc["c", MERCHANT_COLS].notna().all()
    assert out.loc["d", CARD_COLS + MERCHANT_COLS].isna().all()


def test_same_input_same_digest_and_refs_equal_service(demo):
    entity_df = read_label_source(demo["paths"]["transactions"], _day(3), _day(6))
    first = _retrieve(demo, entity_df, "digest_a")
    shuffled = entity_df.sample(frac=1.0, random_state=7)
    second = _retrieve(
        demo, shuffled, "digest_b", feature_service=None, features=list(schema.FEAST_FEATURE_REFS)
    )
    assert first.sha256 == second.sha256 and first.rows == second.rows
    assert first.feature_refs == second.feature_refs
    # the demo's snapshots are created at their event time, so Feast's created-timestamp cutoff changes nothing
    third = _retrieve(demo, entity_df, "digest_c", filter_by_created_timestamp=True)
    assert third.sha256 == first.sha256


def test_duplicate_entity_rows_are_all_kept(demo):
    entity_df = read_label_source(demo["paths"]["transactions"], _day(4), _day(5)).head(50)
    doubled = pd.concat([entity_df, entity_df], ignore_index=True)
    manifest = _retrieve(demo, doubled, "dupes", sort_by=[schema.TIMESTAMP, schema.TRANSACTION_ID])
    out = read_dataset(manifest)
    assert len(out) == 100
    assert (out[schema.TRANSACTION_ID].value_counts() == 2).all()
    assert not out[CARD_COLS].isna().any().any()


def test_errors(demo):
    entity_df = read_label_source(demo["paths"]["transactions"], _day(4), _day(5)).head(20)
    with pytest.raises(FeatureRetrievalError, match=r"card_stats:no_such_feature.*nope:x"):
        _retrieve(demo, entity_df, "err", features=["card_stats:no_such_feature", "nope:x"])
    with pytest.raises(FeatureRetrievalError, match="unknown feature service 'fraud_model_v9'"):
        _retrieve(demo, entity_df, "err", feature_service="fraud_model_v9")
    with pytest.raises(FeatureRetrievalError, match="exactly one"):
        _retrieve(
            demo,
            entity_df,
            "err",
            feature_service=schema.FEATURE_SERVICE,
            features=list(schema.FEAST_FEATURE_REFS),
        )
    with pytest.raises(FeatureRetrievalError, match="exactly one"):
        _retrieve(demo, entity_df, "err", feature_service=None)
    with pytest.raises(FeatureRetrievalError, match="empty"):
        _retrieve(demo, entity_df.iloc[:0], "err")
    with pytest.raises(FeatureRetrievalError, match="lacks columns"):
        _retrieve(demo, entity_df.drop(columns=["merchant_id"]), "err")
    with pytest.raises(FeatureRetrievalError, match="joins on"):
        _retrieve(demo, entity_df, "err", entity_keys=["card_id"])
    assert not (demo["root"] / "out" / "err.parquet").exists()


def test_naive_window_bounds_are_utc(demo):
    naive = read_label_source(demo["paths"]["transactions"], datetime(2026, 1, 2), datetime(2026, 1, 3))
    aware = read_label_source(
        demo["paths"]["transactions"], datetime(2026, 1, 2, tzinfo=UTC), datetime(2026, 1, 3, tzinfo=UTC)
    )
    pd.testing.assert_frame_equal(naive, aware)


def test_asof_and_native_duckdb_stores_give_the_same_training_set(demo):
    """The demo repo uses the ASOF offline store by default; Feast's own duckdb store stays selectable and
    ``retrieve_training_set`` gives byte-identical files through both."""
    import yaml
    from feast import FeatureStore

    from gd_provider.feast_ext.asof_store import STORE_TYPE

    assert yaml.safe_load((demo["repo"] / "feature_store.yaml").read_text())["offline_store"] == {"type": STORE_TYPE}
    native_repo = create_feature_repo(demo["root"] / "repo_duckdb", demo["root"] / "data", offline_store="duckdb")
    assert yaml.safe_load((native_repo / "feature_store.yaml").read_text())["offline_store"] == {"type": "duckdb"}
    native = FeatureStore(repo_path=str(native_repo))

    entity_df = read_label_source(demo["paths"]["transactions"], _day(1), _day(10))
    # make it harder: duplicates, rows before any snapshot and after every TTL
    extra = entity_df.head(30).copy()
    extra[schema.TIMESTAMP] = [_day(0) - pd.Timedelta(hours=1)] * 10 + [_day(CONFIG.days + 5)] * 20
    entity_df = pd.concat([entity_df, entity_df.head(25), extra], ignore_index=True)
    for kwargs in ({"feature_service": schema.FEATURE_SERVICE}, {"features": list(schema.FEAST_FEATURE_REFS)}):
        asof = _retrieve(demo, entity_df, "store_asof", **kwargs)
        nat = retrieve_training_set(
            native,
            entity_df,
            out_uri=str(demo["root"] / "out" / "store_native.parquet"),
            entity_keys=KEYS,
            timestamp_column=schema.TIMESTAMP,
            label_column=schema.LABEL,
            sort_by=[schema.TIMESTAMP, schema.TRANSACTION_ID],
            **kwargs,
        )
        assert asof.rows == nat.rows == len(entity_df)
        assert asof.sha256 == nat.sha256
    with pytest.raises(ValueError, match="offline_store must be one of"):
        create_feature_repo(demo["root"] / "repo_bad", demo["root"] / "data", offline_store="dask")
