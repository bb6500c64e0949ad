"""Point-in-time correctness of ``AsofDuckDBOfflineStore`` against a brute-force reference of Feast's rules.

``test_feast_asof_store.py`` checks that the ASOF store returns what Feast's own ``duckdb`` store returns.
Here both stores are also checked against an independent, row-by-row pandas/numpy implementation of the
rules Feast 0.67 documents in its offline stores, on seeded random data built to hit every edge:

* a feature row is a candidate for an entity row when every join key is equal and not null (SQL ``=``),
  ``feature_ts <= entity_ts`` and, when the view has a TTL (``ttl`` is falsy for ``timedelta(0)``: no
  TTL), ``feature_ts + ttl >= entity_ts`` (both ends inclusive). Sources: ``point_in_time_join`` in
  ``feast/infra/offline_stores/ibis.py`` (the predicates ``feature_table[timestamp_field] <=
  entity_table[event_timestamp_col]`` and ``event_expire_timestamp >= entity_table[event_timestamp_col]``
  with ``event_expire_timestamp = timestamp_field + ttl``), and the BigQuery template in
  ``feast/infra/offline_stores/bigquery.py`` (``event_timestamp <= entity_timestamp`` and
  ``event_timestamp >= Timestamp_sub(entity_timestamp, interval ttl second)``);
* the candidate with the newest ``feature_ts`` wins, ties broken by the newest created timestamp
  (``deduplicate`` in ``ibis.py``: ``ORDER BY ts DESC, created DESC``; the SQL templates keep
  ``MAX(created_timestamp)`` per event timestamp, so a null created timestamp loses to any other);
* with ``filter_by_created_timestamp=True`` a candidate also needs ``created <= entity_ts`` (a null
  created timestamp fails the comparison);
* the winner's values are returned as they are (a NaN / null value is *not* skipped in favour of an
  older row), nulls when there is no candidate; every entity row (duplicates included) comes back once.

A full tie (same key, event timestamp and created timestamp, or same key and event timestamp in a view
without a created column) is undefined in Feast (``ROW_NUMBER`` over equal sort keys); the generator never
makes one and the reference asserts that.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from gd_provider.feast_ext.asof_store import STORE_TYPE

pytestmark = pytest.mark.integration

T0 = pd.Timestamp("2024-06-01", tz="UTC")
H = pd.Timedelta(hours=1)
D = pd.Timedelta(days=1)
US = pd.Timedelta(microseconds=1)
SEEDS = (11, 2024, 90210)


@dataclass(frozen=True)
class ViewSpec:
    name: str
    keys: dict[str, str]  # feature-table column -> entity-frame column
    ttl: pd.Timedelta | None  # None: no TTL (the FeatureView gets timedelta(0))
    created: str | None  # created-timestamp column of the source
    features: tuple[str, ...]  # the first integer one is never null: "matched a null" != "no match"


USER = ViewSpec("user_v", {"user_id": "user_id"}, D, "created", ("u_amt", "u_cnt", "u_tag"))
MERCH = ViewSpec("merch_v", {"merchant_id": "merchant_id"}, 6 * H, None, ("m_risk", "m_seen"))
PAIR = ViewSpec(
    "pair_v", {"user_id": "user_id", "merchant_id": "merchant_id"}, None, "created", ("p_score", "p_n")
)
# user_v projected onto another entity column, in the same request as user_v itself
DEST = ViewSpec("dest", {"user_id": "dest_user_id"}, D, "created", ("u_amt", "u_tag"))
SPECS = (USER, MERCH, PAIR)
N_USERS, N_MERCHANTS = 60, 25


def _merchant(i) -> str:
    return f"m{int(i):02d}"


# ------------------------------------------------------------------------------------------- data


def _random_ts(rng, n: int, lo_h: int, hi_h: int) -> pd.Series:
    """Mostly on an hourly grid (so entity and feature timestamps collide), some at odd microseconds."""
    hours = pd.to_timedelta(rng.integers(lo_h, hi_h, n), unit="h")
    odd = rng.random(n) < 0.3
    offset = pd.to_timedelta(np.where(odd, rng.integers(1, 3_600_000_000, n), 0), unit="us")
    return pd.Series(T0 + hours + offset)


def _with_ties(rng, df: pd.DataFrame, frac: float) -> pd.DataFrame:
    """Copies of some rows with the same keys and event timestamp (other values follow)."""
    dup = df.sample(frac=frac, random_state=int(rng.integers(1 << 31)))
    return pd.concat(
        [df, dup, dup.sample(frac=0.3, random_state=int(rng.integers(1 << 31)))], ignore_index=True
    )


def _created(rng, df: pd.DataFrame, keys: list[str]) -> pd.Series:
    """Distinct created timestamps (a permutation of seconds after the event), a few NaT in tie groups.

    NaT only where its (keys, ts) group has another row, and at most one per group: no full ties."""
    created = df["ts"] + pd.to_timedelta(rng.permutation(len(df)), unit="s")
    group = df.groupby([*keys, "ts"], dropna=False).ngroup()
    sizes = group.map(group.value_counts())
    first_in_group = ~group.duplicated()
    nat = (sizes > 1) & first_in_group & (rng.random(len(df)) < 0.25)
    return created.mask(nat)


def _make_frames(seed: int) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)

    # user_v: key user_id (nullable), TTL 1 day, created column, ties on (user_id, ts)
    n = 450
    user = pd.DataFrame({"user_id": rng.integers(0, N_USERS, n), "ts": _random_ts(rng, n, 0, 240)})
    user = _with_ties(rng, user, 0.15)
    user["user_id"] = user["user_id"].astype("Int64")
    user.loc[user.sample(n=8, random_state=seed).index, "user_id"] = pd.NA  # null keys never match
    n = len(user)
    user["created"] = _created(rng, user, ["user_id"])
    user["u_amt"] = np.where(rng.random(n) < 0.15, np.nan, rng.normal(100, 30, n).round(3))
    user["u_cnt"] = rng.permutation(n).astype("int64")  # distinct: identifies the winning row
    user["u_tag"] = pd.Series(rng.choice(["a", "b", "c", "d"], n), dtype=object).mask(
        rng.random(n) < 0.1, None
    )

    # merch_v: string key, TTL 6 hours, no created column, so no two rows share (merchant_id, ts)
    n = 500
    merch = pd.DataFrame(
        {
            "merchant_id": [_merchant(i) for i in rng.integers(0, N_MERCHANTS, n)],
            "ts": _random_ts(rng, n, 0, 240),
        }
    ).drop_duplicates(["merchant_id", "ts"], ignore_index=True)
    merch.loc[merch.sample(n=4, random_state=seed).index, "merchant_id"] = None
    n = len(merch)
    merch["m_risk"] = np.where(rng.random(n) < 0.2, np.nan, rng.random(n).round(4))
    merch["m_seen"] = rng.permutation(n).astype("int64")

    # pair_v: composite key, no TTL, created column; rows from long before the entity rows
    n = 700
    pair = pd.DataFrame(
        {
            "user_id": rng.integers(0, 20, n),
            "merchant_id": [_merchant(i) for i in rng.integers(0, 8, n)],
            "ts": _random_ts(rng, n, -24 * 60, 240),
        }
    )
    pair = _with_ties(rng, pair, 0.2)
    pair["user_id"] = pair["user_id"].astype("int64")
    n = len(pair)
    pair["created"] = _created(rng, pair, ["user_id", "merchant_id"])
    pair["p_score"] = np.where(rng.random(n) < 0.15, np.nan, rng.normal(0, 1, n).round(5))
    pair["p_n"] = rng.permutation(n).astype("int64")

    for df in (user, merch, pair):
        df["ts"] = pd.to_datetime(df["ts"], utc=True)
        if "created" in df:
            df["created"] = pd.to_datetime(df["created"], utc=True)

    ent = _make_entities(rng, user, merch, pair)
    return {"user_v": user, "merch_v": merch, "pair_v": pair, "entities": ent}


def _make_entities(rng, user, merch, pair) -> pd.DataFrame:
    parts = []

    def add(user_id, merchant_id, ts, kind):
        n = len(ts)
        parts.append(
            pd.DataFrame(
                {
                    "user_id": pd.array(list(user_id), dtype="Int64"),
                    "merchant_id": pd.Series(list(merchant_id), dtype=object),
                    "event_timestamp": pd.to_datetime(pd.Series(list(ts)), utc=True),
                    "kind": [kind] * n,
                }
            )
        )

    def rand_users(n):
        return rng.integers(-3, N_USERS + 3, n)  # some absent from every view

    def rand_merchants(n):
        return [_merchant(i) for i in rng.integers(0, N_MERCHANTS + 3, n)]

    n = 180
    add(rand_users(n), rand_merchants(n), _random_ts(rng, n, -30, 270), "random")
    # pairs that pair_v knows, at random times (most are far from the pair's rows: no TTL matters)
    sample = pair.sample(n=50, random_state=int(rng.integers(1 << 31)))
    add(sample["user_id"], sample["merchant_id"], _random_ts(rng, 50, -30, 270), "pair_random")
    for spec, frame in ((USER, user), (MERCH, merch), (PAIR, pair)):
        sample = frame.dropna(subset=list(spec.keys)).sample(n=25, random_state=int(rng.integers(1 << 31)))
        uid = sample["user_id"] if "user_id" in sample else rand_users(len(sample))
        mid = sample["merchant_id"] if "merchant_id" in sample else rand_merchants(len(sample))
        add(uid, mid, sample["ts"], f"exact_{spec.name}")  # entity ts == feature ts: included (<=)
        add(uid, mid, sample["ts"] - US, f"before_{spec.name}")  # 1 us earlier: that row is excluded
        if spec.ttl is not None:
            add(uid, mid, sample["ts"] + spec.ttl, f"ttl_edge_{spec.name}")  # ts + ttl == ets: included
            add(uid, mid, sample["ts"] + spec.ttl + US, f"ttl_out_{spec.name}")  # 1 us too old
    # before any feature row of any view
    add(rand_users(10), rand_merchants(10), [T0 - 200 * D + i * H for i in range(10)], "before_all")
    # null keys (features with null keys exist too: they must never match)
    n = 12
    add([pd.NA] * n, rand_merchants(n), _random_ts(rng, n, 0, 240), "null_user")
    add(rand_users(n), [None] * n, _random_ts(rng, n, 0, 240), "null_merchant")
    ent = pd.concat(parts, ignore_index=True)
    # exact duplicates of entity rows: each comes back, with the same values
    ent = pd.concat([ent, ent.sample(n=30, random_state=int(rng.integers(1 << 31)))], ignore_index=True)
    ent = ent.sample(frac=1.0, random_state=int(rng.integers(1 << 31))).reset_index(drop=True)
    ent["dest_user_id"] = pd.array(rng.integers(-2, N_USERS + 2, len(ent)), dtype="Int64")
    ent["label"] = rng.integers(0, 2, len(ent)).astype("int64")
    ent["row_id"] = np.arange(len(ent), dtype="int64")
    return ent[["row_id", "user_id", "merchant_id", "dest_user_id", "event_timestamp", "label", "kind"]]


# -------------------------------------------------------------------------------------- reference


def _codes(entity_values: pd.Series, feature_values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes shared by both sides; null -> -1 (and -1 never matches, as SQL ``=``)."""
    both = pd.concat([pd.Series(entity_values, dtype=object), pd.Series(feature_values, dtype=object)])
    codes, _ = pd.factorize(both.where(both.notna(), None), use_na_sentinel=True)
    return codes[: len(entity_values)], codes[len(entity_values) :]


def _ns(values) -> np.ndarray:
    return pd.to_datetime(pd.Series(values), utc=True).to_numpy(dtype="datetime64[ns]").astype("int64")


def reference(
    entity: pd.DataFrame, frame: pd.DataFrame, spec: ViewSpec, *, filter_by_created: bool = False
) -> pd.DataFrame:
    """The winning feature row per entity row, by brute force. Columns: ``spec.features`` (object values,
    ``None`` where no row matched) and ``__win`` (the frame position of the winner, -1 if none)."""
    nat = np.iinfo("int64").min
    frame = frame.reset_index(drop=True)
    fts = _ns(frame["ts"])
    created = _ns(frame[spec.created]) if spec.created else np.zeros(len(frame), dtype="int64")
    if spec.created:
        created_null = frame[spec.created].isna().to_numpy()
        created = np.where(created_null, nat, created)  # NaT ranks below any created timestamp
    # ascending by (ts, created): the winner among candidates is the last one in this order
    order = np.lexsort((created, fts))
    fts, created = fts[order], created[order]
    key_codes = [_codes(entity[e], frame[f]) for f, e in spec.keys.items()]
    key_codes = [(ec, fc[order]) for ec, fc in key_codes]
    ets_all = _ns(entity["event_timestamp"])
    ttl = None if spec.ttl is None else spec.ttl.value

    win = np.full(len(entity), -1, dtype="int64")
    for i, ets in enumerate(ets_all):
        if any(ec[i] < 0 for ec, _ in key_codes):
            continue  # a null join key matches nothing
        mask = fts <= ets
        for ec, fc in key_codes:
            mask &= fc == ec[i]
        if ttl is not None:
            mask &= fts + ttl >= ets
        if filter_by_created:
            mask &= (created != nat) & (created <= ets)
        hits = np.flatnonzero(mask)
        if len(hits):
            best = hits[-1]
            if len(hits) > 1:
                runner_up = hits[-2]
                assert (fts[runner_up], created[runner_up]) != (fts[best], created[best]), "full tie in data"
            win[i] = order[best]
    out = {}
    for f in spec.features:
        values = frame[f].to_numpy(dtype=object)
        out[f] = pd.Series(
            [_norm(values[w]) if w >= 0 else None for w in win], dtype=object, index=entity.index
        )
    out["__win"] = pd.Series(win, index=entity.index)
    return pd.DataFrame(out, index=entity.index)


def _norm(value):
    """One representation per value: None for every kind of null, float for numbers, str for text."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float | np.floating) and np.isnan(value):
        return None
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    return value


def _check_against_reference(
    got: pd.DataFrame,
    ent: pd.DataFrame,
    expected: dict[str, pd.DataFrame],
    columns: dict[str, tuple[ViewSpec, str]],
    what: str,
) -> None:
    """``got`` (any row order) has each entity row once, unchanged, with the reference's feature values."""
    assert len(got) == len(ent), f"{what}: {len(got)} rows for {len(ent)} entity rows"
    assert sorted(got["row_id"].tolist()) == ent["row_id"].tolist(), f"{what}: rows dropped or duplicated"
    got = got.set_index("row_id").loc[ent["row_id"]]
    for col in ("user_id", "merchant_id", "dest_user_id", "label"):
        if col in got:
            assert [_norm(v) for v in got[col]] == [_norm(v) for v in ent[col]], f"{what}: {col} changed"
    assert (
        pd.to_datetime(got["event_timestamp"], utc=True).to_numpy() == ent["event_timestamp"].to_numpy()
    ).all(), f"{what}: event_timestamp changed"
    problems = []
    for column, (spec, feature) in columns.items():
        want = expected[spec.name][feature].tolist()
        have = [_norm(v) for v in got[column]]
        bad = [i for i, (a, b) in enumerate(zip(have, want, strict=True)) if a != b]
        for i in bad[:5]:
            row = ent.iloc[i]
            problems.append(
                f"{column} row_id={row['row_id']} kind={row['kind']} user={row['user_id']} "
                f"merchant={row['merchant_id']} dest={row['dest_user_id']} ets={row['event_timestamp']}: "
                f"got {have[i]!r}, reference {want[i]!r}"
            )
        if bad:
            problems.append(f"{column}: {len(bad)} of {len(have)} rows differ")
    assert not problems, f"{what} disagrees with the reference:\n" + "\n".join(problems)


# ------------------------------------------------------------------------------------------ stores


def _build(root, seed: int):
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

    frames = _make_frames(seed)
    for spec in SPECS:
        frames[spec.name].to_parquet(root / f"{spec.name}.parquet", index=False)
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
    merchant = Entity(name="merchant", join_keys=["merchant_id"], value_type=ValueType.STRING)
    types = {
        "u_amt": Float64,
        "u_cnt": Int64,
        "u_tag": String,
        "m_risk": Float64,
        "m_seen": Int64,
        "p_score": Float64,
        "p_n": Int64,
        "user_id": Int64,
        "merchant_id": String,
    }
    entities = {"user_id": user, "merchant_id": merchant}
    views = {}
    for spec in SPECS:
        views[spec.name] = FeatureView(
            name=spec.name,
            entities=[entities[k] for k in spec.keys],
            ttl=timedelta(0) if spec.ttl is None else spec.ttl.to_pytimedelta(),
            schema=[Field(name=c, dtype=types[c]) for c in (*spec.keys, *spec.features)],
            source=FileSource(
                name=f"{spec.name}_src",
                path=str(root / f"{spec.name}.parquet"),
                timestamp_field="ts",
                created_timestamp_column=spec.created or "",
            ),
        )
    # both projections of user_v carry an alias: Feast 0.67's FeatureService.__eq__ sorts projections and
    # raises TypeError comparing name_alias None with a str (feast/feature_service.py:410)
    home = views["user_v"].with_name("home")
    dest = views["user_v"].with_name("dest").with_join_key_map({"user_id": "dest_user_id"})
    service = FeatureService(name="twice", features=[home, dest[["u_amt", "u_tag"]], views["pair_v"]])

    def store(offline: dict):
        config = RepoConfig(
            project="pit_ref",
            provider="local",
            registry=str(root / "registry.db"),
            offline_store=offline,
            online_store={"type": "sqlite", "path": str(root / "online.db")},
            entity_key_serialization_version=3,
            repo_path=root,
        )
        return FeatureStore(config=config)

    native = store({"type": "duckdb"})
    native.apply([user, merchant, *views.values(), service])
    return {
        "native": native,
        "asof": store({"type": STORE_TYPE}),
        "asof_ordered": store({"type": STORE_TYPE, "keep_entity_order": True}),
        "frames": frames,
        "root": root,
    }


@pytest.fixture(scope="module", params=SEEDS, ids=[f"seed{s}" for s in SEEDS])
def world(request, tmp_path_factory):
    return _build(tmp_path_factory.mktemp(f"pit_ref_{request.param}"), request.param)


def _expected(world, specs=SPECS, entity=None, **kwargs) -> dict[str, pd.DataFrame]:
    ent = world["frames"]["entities"] if entity is None else entity
    frames = world["frames"]
    return {s.name: reference(ent, frames["user_v" if s is DEST else s.name], s, **kwargs) for s in specs}


def _get(world, kind: str, features, entity=None, **kwargs) -> pd.DataFrame:
    ent = world["frames"]["entities"] if entity is None else entity
    job = world[kind].get_historical_features(entity_df=ent.copy(), features=features, **kwargs)
    return job.to_df()


ALL_REFS = [f"{s.name}:{f}" for s in SPECS for f in s.features]
ALL_COLUMNS = {f: (s, f) for s in SPECS for f in s.features}


# ------------------------------------------------------------------------------------------- tests


def test_the_data_exercises_every_rule(world):
    """Guards the generator: each edge the reference is about must occur and decide rows."""
    ent, frames = world["frames"]["entities"], world["frames"]
    exp = _expected(world)
    kinds = ent["kind"].to_numpy()
    ets = _ns(ent["event_timestamp"])
    user_win, merch_win, pair_win = (exp[s.name]["__win"].to_numpy() for s in SPECS)
    user = frames["user_v"]
    # ties on (user_id, ts), decided by the created timestamp (NaT created loses), win often
    tie_groups = user.groupby(["user_id", "ts"]).size()
    assert (tie_groups > 1).sum() >= 30 and user["created"].isna().sum() >= 5
    won = user.iloc[user_win[user_win >= 0]].set_index(["user_id", "ts"]).index
    assert won.isin(tie_groups[tie_groups > 1].index).sum() >= 20
    # entity ts == feature ts: that row is a candidate (<=)
    for spec, wins in ((USER, user_win), (MERCH, merch_win), (PAIR, pair_win)):
        exact = kinds == f"exact_{spec.name}"
        assert (wins[exact] >= 0).all() and (_ns(frames[spec.name]["ts"])[wins[exact]] == ets[exact]).all()
    # TTL: decides many rows; at ts + ttl == ets the edge row itself often wins, 1 us later it is out
    for spec, wins in ((USER, user_win), (MERCH, merch_win)):
        frame = frames[spec.name]
        no_ttl = reference(ent, frame, replace(spec, ttl=None))["__win"].to_numpy()
        assert (no_ttl != wins).sum() >= 50
        edge, out = kinds == f"ttl_edge_{spec.name}", kinds == f"ttl_out_{spec.name}"
        assert (wins[edge] >= 0).all()
        assert (_ns(frame["ts"])[wins[edge]] + spec.ttl.value == ets[edge]).sum() >= 5
        assert (wins[out] != no_ttl[out]).sum() >= 5
    # rows before everything, null keys: no match
    assert (user_win[kinds == "before_all"] == -1).all() and (merch_win[kinds == "before_all"] == -1).all()
    assert (user_win[kinds == "null_user"] == -1).all() and (pair_win[kinds == "null_user"] == -1).all()
    assert (merch_win[kinds == "null_merchant"] == -1).all() and (
        pair_win[kinds == "null_merchant"] == -1
    ).all()
    # no TTL: pair rows from weeks before the entity row still count
    pair_age = ets[pair_win >= 0] - _ns(frames["pair_v"]["ts"])[pair_win[pair_win >= 0]]
    assert (pair_age > 30 * D.value).sum() >= 10
    # winners whose value is null (to be returned as null, not replaced by an older value)
    assert sum(v is None for v, w in zip(exp["user_v"]["u_amt"], user_win, strict=True) if w >= 0) >= 10
    assert ent.duplicated(["user_id", "merchant_id", "event_timestamp"]).sum() >= 20
    assert 300 <= len(ent) <= 700


def test_asof_store_matches_reference_and_feast_duckdb(world):
    exp = _expected(world)
    ent = world["frames"]["entities"]
    asof = _get(world, "asof", ALL_REFS)
    _check_against_reference(asof, ent, exp, ALL_COLUMNS, "ASOF store")
    native = _get(world, "native", ALL_REFS)
    _check_against_reference(native, ent, exp, ALL_COLUMNS, "Feast duckdb store")
    pd.testing.assert_frame_equal(
        asof.sort_values("row_id").reset_index(drop=True), native.sort_values("row_id").reset_index(drop=True)
    )


def test_same_view_twice_with_join_key_map_and_full_names(world):
    """user_v twice: as "home" on user_id and as "dest" on dest_user_id; plus pair_v; full names."""
    service = world["native"].get_feature_service("twice")
    ent = world["frames"]["entities"]
    exp = _expected(world, specs=(USER, DEST, PAIR))
    columns = {f"home__{f}": (USER, f) for f in USER.features}
    columns |= {f"dest__{f}": (DEST, f) for f in DEST.features}
    columns |= {f"pair_v__{f}": (PAIR, f) for f in PAIR.features}
    for kind in ("asof", "native"):
        got = _get(world, kind, service, full_feature_names=True)
        assert list(got.columns[-len(columns) :]) == list(columns)
        _check_against_reference(got, ent, exp, columns, f"{kind} store (feature service)")


def test_filter_by_created_timestamp(world):
    """Answered by Feast's DuckDB path inside the ASOF store; the rule: also ``created <= entity ts``."""
    ent = world["frames"]["entities"]
    exp = _expected(world, filter_by_created=True)
    plain = _expected(world)
    assert (exp["user_v"]["__win"] != plain["user_v"]["__win"]).sum() >= 20  # the filter decides rows
    for kind in ("asof", "native"):
        got = _get(world, kind, ALL_REFS, filter_by_created_timestamp=True)
        _check_against_reference(got, ent, exp, ALL_COLUMNS, f"{kind} store, filter_by_created_timestamp")


def test_keep_entity_order_other_timezone_float_keys(world):
    """Rows in input order with ``keep_entity_order`` (a shuffled, non-default index); entity timestamps
    in another zone are the same instants; a float64 key column (NaN for missing, as pandas reads a
    nullable int) joins like the integer one."""
    ent = world["frames"]["entities"]
    shuffled = ent.sample(frac=1.0, random_state=7)
    shuffled["event_timestamp"] = shuffled["event_timestamp"].dt.tz_convert("America/New_York")
    shuffled["user_id"] = shuffled["user_id"].astype("float64")
    got = _get(world, "asof_ordered", ALL_REFS, entity=shuffled)
    assert got["row_id"].tolist() == shuffled["row_id"].tolist()
    _check_against_reference(got, ent, _expected(world), ALL_COLUMNS, "ASOF store, keep_entity_order")


def test_retrieve_training_set_matches_reference(world, tmp_path):
    """The product's path: ``core.features.retrieve_training_set`` on the ASOF store, read back."""
    from gd_provider.core.data import read_dataset
    from gd_provider.core.features import retrieve_training_set

    ent = world["frames"]["entities"]
    manifest = retrieve_training_set(
        world["asof"],
        ent.drop(columns=["dest_user_id"]),
        out_uri=str(tmp_path / "train.parquet"),
        features=ALL_REFS,
        entity_keys=["user_id", "merchant_id"],
        timestamp_column="event_timestamp",
        label_column="label",
        sort_by=["event_timestamp", "row_id"],
    )
    out = read_dataset(manifest)
    assert manifest.rows == len(ent)
    _check_against_reference(out, ent, _expected(world), ALL_COLUMNS, "retrieve_training_set")
