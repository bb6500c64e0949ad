"""``AsofDuckDBOfflineStore`` returns exactly what Feast's own ``duckdb`` offline store returns.

Both stores share one registry and the same parquet files; every comparison sorts by a row id the entity
frame carries and then requires equal frames: same rows, same columns in the same order, same dtypes,
same values, NaN / None in the same places.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from gd_provider.feast_ext.asof_store import STORE_TYPE, AsofDuckDBOfflineStore, AsofDuckDBOfflineStoreConfig

pytestmark = pytest.mark.integration

T0 = pd.Timestamp("2024-03-10", tz="UTC")
H = pd.Timedelta(hours=1)
D = pd.Timedelta(days=1)


def _tricky_frames() -> dict[str, pd.DataFrame]:
    """Hand-made rows, one per rule (see the comments); then random rows on an hourly grid."""
    # view "va": key a_id, TTL 1 day, created-timestamp column
    va = [
        # a_id, ts, created, fa1, fa2, fa3
        (1, T0, T0, 1.0, 10, "x"),  # same event ts as the next row, created earlier: loses
        (1, T0, T0 + H, 2.0, 20, "y"),  # ... created later: wins
        (1, T0 + 5 * H, T0, 3.0, 30, "z"),
        (1, T0 + 30 * H, T0, 99.0, 99, "late"),  # after every entity ts of key 1 below: never used
        (2, T0 - 3 * D, T0, 4.0, 40, "w"),  # out of the 1-day TTL for entity rows at T0
        (2, T0, T0, 5.0, 50, "v"),
        (3, T0, T0, np.nan, 60, None),  # null feature values are values
        (5, T0 + D, T0, 7.0, 70, "t"),  # after the entity ts of key 5
        (6, T0 - D, T0, 8.0, 80, "s"),  # exactly at the TTL edge for entity ts T0: kept (ts + ttl >= ets)
    ]
    # view "vb": key b_id, TTL 7 days, no created column
    vb = [
        (1, T0 - 5 * D, 0.5),
        (2, T0 - 20 * D, 0.6),  # out of TTL
        (2, T0 + H, 0.7),
        (9, T0, 0.8),
    ]
    # view "vab": composite key (a_id, b_id), no TTL
    vab = [
        (1, 1, T0 - 100 * D, 11.0),
        (1, 2, T0 + 6 * H, 12.0),
        (2, 2, T0, 22.0),
    ]
    entities = [
        # a_id, b_id, event_timestamp
        (1, 1, T0),  # == feature ts of va key 1 (two rows, created tie-break)
        (1, 1, T0),  # duplicate (key, ts) entity row: kept, same values
        (1, 2, T0 + 6 * H),  # va: T0+5h; vab: exactly equal ts
        (2, 2, T0 + H),
        (2, 9, T0 - D),  # va key 2: only the T0-3d row is <= ets and it is inside the TTL? no: 2 days
        (3, 1, T0 + 2 * D),  # out of va's TTL; vb within 7 days
        (4, 2, T0),  # a_id 4 absent from va
        (None, 1, T0),  # null key never matches
        (1, 1, T0 + D + 5 * H),  # va: T0+5h (24h old: in TTL); the T0+30h row is later
        (5, 2, T0),  # va key 5: only a later row
        (6, 3, T0),  # TTL edge; b_id 3 absent from vb
        (7, 7, T0 + 1000 * D),  # nothing anywhere
    ]
    rng = np.random.default_rng(3)
    n_rand = 400
    rand_va = pd.DataFrame(
        {
            "a_id": rng.integers(10, 30, n_rand),
            "ts": T0 + pd.to_timedelta(rng.integers(0, 96, n_rand), unit="h"),
            # distinct created values, so Feast's own ranking never meets a full tie
            "created": T0 + pd.to_timedelta(rng.permutation(n_rand), unit="s"),
            "fa1": rng.standard_normal(n_rand),
            "fa2": rng.integers(0, 1000, n_rand),
            "fa3": rng.choice(["p", "q", "r"], n_rand),
        }
    )
    rand_vb = pd.DataFrame(
        {"b_id": np.arange(10, 40), "ts": T0 + pd.to_timedelta(rng.integers(0, 96, 30), unit="h")}
    ).assign(fb1=rng.standard_normal(30))
    n_ent = 600
    rand_ent = pd.DataFrame(
        {
            "a_id": rng.integers(8, 32, n_ent),  # some keys absent
            "b_id": rng.integers(8, 42, n_ent),
            "event_timestamp": T0 + pd.to_timedelta(rng.integers(-24, 200, n_ent), unit="h"),
        }
    )
    va_df = pd.concat(
        [pd.DataFrame(va, columns=["a_id", "ts", "created", "fa1", "fa2", "fa3"]), rand_va], ignore_index=True
    )
    vb_df = pd.concat([pd.DataFrame(vb, columns=["b_id", "ts", "fb1"]), rand_vb], ignore_index=True)
    vab_df = pd.DataFrame(vab, columns=["a_id", "b_id", "ts", "fab1"])
    ent = pd.concat(
        [pd.DataFrame(entities, columns=["a_id", "b_id", "event_timestamp"]), rand_ent], ignore_index=True
    )
    ent["a_id"] = ent["a_id"].astype("Int64")
    ent["b_id"] = ent["b_id"].astype("int64")
    ent["event_timestamp"] = pd.to_datetime(ent["event_timestamp"], utc=True)
    ent["row_id"] = np.arange(len(ent), dtype="int64")
    ent["label"] = rng.integers(0, 2, len(ent))
    for df in (va_df, vb_df, vab_df):
        df["ts"] = pd.to_datetime(df["ts"], utc=True)
        for key in ("a_id", "b_id"):
            if key in df:
                df[key] = df[key].astype("int64")
    va_df["created"] = pd.to_datetime(va_df["created"], utc=True)
    va_df["fa2"] = va_df["fa2"].astype("int64")
    return {"va": va_df, "vb": vb_df, "vab": vab_df, "entities": ent}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    from feast import (
        Entity,
        FeatureService,
        FeatureStore,
        FeatureView,
        Field,
        FileSource,
        RepoConfig,
        ValueType,
    )
    from feast.types import Float64, Int64, String

    root = tmp_path_factory.mktemp("asof_store")
    frames = _tricky_frames()
    for name in ("va", "vb", "vab"):
        frame = frames[name]
        if name == "vb":  # the source names the feature differently: a field mapping renames it
            frame = frame.rename(columns={"fb1": "raw_fb1"})
        frame.to_parquet(root / f"{name}.parquet", index=False)
    ea = Entity(name="a", join_keys=["a_id"], value_type=ValueType.INT64)
    eb = Entity(name="b", join_keys=["b_id"], value_type=ValueType.INT64)
    va = FeatureView(
        name="va",
        entities=[ea],
        ttl=timedelta(days=1),
        schema=[
            Field(name="a_id", dtype=Int64),
            Field(name="fa1", dtype=Float64),
            Field(name="fa2", dtype=Int64),
            Field(name="fa3", dtype=String),
        ],
        source=FileSource(
            name="va_src",
            path=str(root / "va.parquet"),
            timestamp_field="ts",
            created_timestamp_column="created",
        ),
    )
    vb = FeatureView(
        name="vb",
        entities=[eb],
        ttl=timedelta(days=7),
        schema=[Field(name="b_id", dtype=Int64), Field(name="fb1", dtype=Float64)],
        source=FileSource(
            name="vb_src",
            path=str(root / "vb.parquet"),
            timestamp_field="ts",
            field_mapping={"raw_fb1": "fb1"},
        ),
    )
    vab = FeatureView(
        name="vab",
        entities=[ea, eb],
        ttl=timedelta(0),  # no TTL
        schema=[
            Field(name="a_id", dtype=Int64),
            Field(name="b_id", dtype=Int64),
            Field(name="fab1", dtype=Float64),
        ],
        source=FileSource(name="vab_src", path=str(root / "vab.parquet"), timestamp_field="ts"),
    )
    from feast.on_demand_feature_view import on_demand_feature_view

    @on_demand_feature_view(sources=[va], schema=[Field(name="fa1_x2", dtype=Float64)], mode="pandas")
    def va_double(inputs: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"fa1_x2": inputs["fa1"] * 2})

    services = [
        FeatureService(name="svc", features=[va[["fa2", "fa1"]], vb, vab]),
        # a view renamed and joined on another entity column (b_id's values looked up as a_id)
        FeatureService(
            name="svc_alias",
            features=[va.with_name("va_by_b").with_join_key_map({"a_id": "b_id"})[["fa1", "fa3"]], vb],
        ),
    ]

    def store(kind: str):
        offline = {"type": STORE_TYPE} if kind == "asof" else {"type": "duckdb"}
        config = RepoConfig(
            project="asof_test",
            provider="local",
            registry=str(root / "registry.db"),
            offline_store=offline,
            online_store={"type": "sqlite", "path": str(root / "online.db")},
            entity_key_serialization_version=3,
            repo_path=root,
        )
        return FeatureStore(config=config)

    native = store("duckdb")
    native.apply([ea, eb, va, vb, vab, va_double, *services])
    return {"native": native, "asof": store("asof"), "frames": frames, "root": root}


def _both(stores, features, *, entity_df=None, **kwargs):
    entity_df = stores["frames"]["entities"] if entity_df is None else entity_df
    if isinstance(features, str):
        features = stores["native"].get_feature_service(features)
    out = []
    for kind in ("native", "asof"):
        df = (
            stores[kind]
            .get_historical_features(entity_df=entity_df.copy(), features=features, **kwargs)
            .to_df()
        )
        out.append(df.sort_values("row_id", kind="mergesort").reset_index(drop=True))
    return out


def test_config_resolves_to_the_asof_store(stores):
    from feast.infra.offline_stores.offline_utils import get_offline_store_from_config

    config = stores["asof"].config
    assert type(config.offline_store) is AsofDuckDBOfflineStoreConfig
    assert config.offline_store.type == STORE_TYPE
    assert isinstance(get_offline_store_from_config(config.offline_store), AsofDuckDBOfflineStore)


@pytest.mark.parametrize("full_feature_names", [False, True])
@pytest.mark.parametrize(
    "features",
    [
        "svc",
        ["va:fa1", "va:fa2", "va:fa3", "vb:fb1", "vab:fab1"],
        ["vb:fb1", "va:fa3"],  # view order as asked
        ["vab:fab1"],
        ["va_double:fa1_x2", "vb:fb1"],  # an on-demand view (computed after the join)
    ],
)
def test_same_result_as_feast_duckdb(stores, features, full_feature_names):
    native, asof = _both(stores, features, full_feature_names=full_feature_names)
    pd.testing.assert_frame_equal(asof, native)
    assert len(asof) == len(stores["frames"]["entities"])
    assert asof["row_id"].tolist() == list(range(len(asof)))  # every entity row exactly once


def test_feature_service_with_alias_and_join_key_map(stores):
    native, asof = _both(stores, "svc_alias", full_feature_names=True)
    pd.testing.assert_frame_equal(asof, native)
    assert {"va_by_b__fa1", "va_by_b__fa3", "vb__fb1"} <= set(asof.columns)
    assert asof["va_by_b__fa1"].notna().any()


def test_the_tricky_rows_have_the_expected_values(stores):
    native, asof = _both(stores, ["va:fa1", "va:fa3", "vb:fb1", "vab:fab1"])
    pd.testing.assert_frame_equal(asof, native)
    got = asof.set_index("row_id")
    fa1 = got["fa1"]
    assert fa1[0] == 2.0 and fa1[1] == 2.0  # created tie-break; the duplicate entity row is kept
    assert fa1[2] == 3.0 and got.loc[2, "fab1"] == 12.0  # entity ts == feature ts counts (<=)
    assert fa1[3] == 5.0 and got.loc[3, "fb1"] == 0.7
    assert np.isnan(fa1[4]) and np.isnan(got.loc[4, "fb1"])  # 2 days old > 1-day TTL; b 9 only later
    assert np.isnan(fa1[5]) and got.loc[5, "fb1"] == 0.5  # different TTLs per view
    assert np.isnan(fa1[6]) and np.isnan(fa1[7])  # absent key; null key
    assert fa1[8] == 3.0  # the later row (T0+30h) is never used
    assert np.isnan(fa1[9])  # only a feature row after the entity ts
    assert fa1[10] == 8.0 and np.isnan(got.loc[10, "fb1"])  # exactly at the TTL edge: kept
    assert got.loc[0, "fab1"] == 11.0  # no TTL: 100 days old still counts
    assert got.loc[11, ["fa1", "fb1", "fab1"]].isna().all() and got.loc[11, "fa3"] is None


def test_entity_frame_variants(stores):
    ent = stores["frames"]["entities"]
    # no column named event_timestamp: Feast infers the one datetime column
    renamed = ent.rename(columns={"event_timestamp": "ts_of_row"})
    native, asof = _both(stores, ["va:fa1", "vb:fb1"], entity_df=renamed)
    pd.testing.assert_frame_equal(asof, native)
    # timestamps as ISO strings, and extra columns of several types pass through
    as_text = ent.assign(
        event_timestamp=ent["event_timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S%z"),
        note=[f"n{i}" for i in range(len(ent))],
        weight=np.linspace(0, 1, len(ent)),
    )
    native, asof = _both(stores, "svc", entity_df=as_text)
    pd.testing.assert_frame_equal(asof, native)
    # a single row, and rows that all miss
    native, asof = _both(stores, "svc", entity_df=ent.head(1))
    pd.testing.assert_frame_equal(asof, native)
    far = ent.assign(event_timestamp=T0 - 1000 * D)
    native, asof = _both(stores, "svc", entity_df=far)
    pd.testing.assert_frame_equal(asof, native)
    assert asof[["fa1", "fa2", "fb1", "fab1"]].isna().all().all()


def test_filter_by_created_timestamp_is_answered_like_feast(stores):
    native, asof = _both(stores, ["va:fa1", "vb:fb1"], filter_by_created_timestamp=True)
    pd.testing.assert_frame_equal(asof, native)
    # the created cutoff changes the answer for row 0 (the winning row was created an hour after T0)
    assert asof.loc[0, "fa1"] == 1.0


def test_keep_entity_order_option(stores, tmp_path):
    from feast import FeatureStore, RepoConfig

    native = stores["native"]
    config = RepoConfig(
        project="asof_test",
        provider="local",
        registry=str(stores["root"] / "registry.db"),
        offline_store={"type": STORE_TYPE, "keep_entity_order": True},
        online_store={"type": "sqlite", "path": str(tmp_path / "online.db")},
        entity_key_serialization_version=3,
        repo_path=stores["root"],
    )
    ordered = FeatureStore(config=config)
    ent = stores["frames"]["entities"].sample(frac=1.0, random_state=1)
    features = native.get_feature_service("svc")
    got = ordered.get_historical_features(entity_df=ent, features=features).to_df()
    assert got["row_id"].tolist() == ent["row_id"].tolist()
    want = native.get_historical_features(entity_df=ent, features=features).to_df()
    pd.testing.assert_frame_equal(
        got.sort_values("row_id").reset_index(drop=True), want.sort_values("row_id").reset_index(drop=True)
    )


def test_unknown_feature_is_refused_like_feast(stores):
    ent = stores["frames"]["entities"]
    errors = []
    for kind in ("native", "asof"):
        # Feast refuses the reference itself ("Feature no_such not found in projection va"), naming it
        with pytest.raises(Exception, match="no_such") as info:
            stores[kind].get_historical_features(entity_df=ent, features=["va:no_such"]).to_df()
        errors.append(type(info.value))
    assert errors[0] is errors[1]
