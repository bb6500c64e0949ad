"""Time-based splitting, the feature preprocessor, and the loop's pure helpers (no Ray)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from gd_provider.core.training.loop import _stop_early, ranking_metrics, shard_rows
from gd_provider.core.training.preprocess import (
    UNKNOWN,
    PreprocessError,
    Preprocessor,
    frame_digest,
    split_by_time,
    split_sizes,
)


def _frame(n: int = 100, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    # Coarse timestamps (10 distinct) so many rows tie and the transaction_id tie-break matters.
    ts = pd.Timestamp("2025-03-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 10, n), unit="h")
    return pd.DataFrame(
        {
            "transaction_id": [f"t{i:04d}" for i in rng.permutation(n)],
            "event_timestamp": ts,
            "amount": rng.normal(50, 10, n),
            "count": rng.integers(0, 5, n),
            "channel": rng.choice(["pos", "online", "atm"], n),
            "is_fraud": rng.integers(0, 2, n),
        }
    )


KEYS = ("transaction_id",)  # orders the rows sharing a timestamp


# ---------------------------------------------------------------------------------------------- split
def test_split_sizes_and_time_order_with_distinct_timestamps():
    df = _frame(100)
    df["event_timestamp"] = pd.Timestamp("2025-03-01", tz="UTC") + pd.to_timedelta(
        np.random.default_rng(5).permutation(100), unit="min")
    train, val, holdout = split_by_time(df, "event_timestamp", 0.15, 0.2)  # no ties: no key columns needed
    assert (len(train), len(val), len(holdout)) == split_sizes(100, 0.15, 0.2) == (65, 15, 20)
    assert train["event_timestamp"].max() < val["event_timestamp"].min()
    assert val["event_timestamp"].max() < holdout["event_timestamp"].min()
    # holdout is the latest rows
    assert holdout["event_timestamp"].max() == df["event_timestamp"].max()
    assert list(holdout.index) == list(range(20))
    assert sorted(pd.concat([train, val, holdout])["transaction_id"]) == sorted(df["transaction_id"])


def test_rows_sharing_a_timestamp_are_never_split_between_parts():
    df = _frame(100)  # 10 distinct hours: both nominal boundaries (65, 85) fall inside a group of ties
    ts = df["event_timestamp"].sort_values().reset_index(drop=True)
    assert split_sizes(100, 0.2, 0.15) == (65, 20, 15) and ts[64] == ts[65] and ts[84] == ts[85]
    train, val, holdout = split_by_time(df, "event_timestamp", 0.2, 0.15, key_columns=KEYS)
    assert train["event_timestamp"].max() < val["event_timestamp"].min()
    assert val["event_timestamp"].max() < holdout["event_timestamp"].min()
    # each boundary moved back to the start of its group: the later part took the whole group
    assert len(train) == int((ts < ts[65]).sum()) and len(train) + len(val) == int((ts < ts[85]).sum())
    assert (len(train), len(val), len(holdout)) == (57, 23, 20)
    assert sorted(pd.concat([train, val, holdout])["transaction_id"]) == sorted(df["transaction_id"])


def test_a_tie_group_at_the_start_moves_the_boundary_forward_and_one_that_cannot_move_is_an_error():
    t0 = pd.Timestamp("2025-03-01", tz="UTC")
    # the first 70 rows share a timestamp: the train/validation boundary (60) moves past them
    ts = [t0] * 70 + [t0 + pd.Timedelta(minutes=i) for i in range(1, 31)]
    df = pd.DataFrame({"transaction_id": [f"t{i:03d}" for i in range(100)], "event_timestamp": ts})
    train, val, holdout = split_by_time(df, "event_timestamp", 0.2, 0.2, key_columns=KEYS)
    assert (len(train), len(val), len(holdout)) == (70, 10, 20)
    # the holdout's start cannot move back (that leaves no room between training and validation): it moves
    # past its group instead
    for days, fractions, sizes in (([0] * 80 + [1] * 10 + [2] * 10, (0.15, 0.15), (80, 10, 10)),
                                   ([0] * 8 + [1, 2], (0.2, 0.2), (8, 1, 1))):
        tied = pd.DataFrame({"transaction_id": [f"t{i:03d}" for i in range(len(days))],
                             "event_timestamp": [t0 + pd.Timedelta(days=d) for d in days]})
        assert tuple(len(p) for p in split_by_time(tied, "event_timestamp", *fractions, key_columns=KEYS)) == sizes
    # every row at one timestamp: no split keeps the holdout apart
    df["event_timestamp"] = t0
    with pytest.raises(PreprocessError, match=r"start of the holdout all share the timestamp .*never split"):
        split_by_time(df, "event_timestamp", 0.2, 0.2)


def test_split_is_deterministic_for_any_input_order():
    df = _frame(200, seed=1)
    parts = split_by_time(df, "event_timestamp", 0.15, 0.15, key_columns=KEYS)
    shuffled = df.sample(frac=1.0, random_state=7)
    again = split_by_time(shuffled, "event_timestamp", 0.15, 0.15, key_columns=KEYS)
    for a, b in zip(parts, again, strict=True):
        pd.testing.assert_frame_equal(a, b)
    # ties on the timestamp are broken by transaction_id
    hold = parts[2]
    for _, group in hold.groupby("event_timestamp"):
        assert list(group["transaction_id"]) == sorted(group["transaction_id"])


def test_ties_without_key_columns_are_an_error_unless_the_tied_rows_are_identical():
    df = _frame(50).drop(columns=["transaction_id"])  # 10 distinct hours: rows tie, and differ
    with pytest.raises(PreprocessError, match=r"no key columns are given.*give training.key_columns \(columns "
                       r"that order rows sharing a timestamp"):
        split_by_time(df, "event_timestamp", 0.2, 0.2)
    # rows that tie and are identical in every column: their order cannot matter
    t0 = pd.Timestamp("2025-03-01", tz="UTC")
    same = pd.DataFrame({"event_timestamp": [t0 + pd.Timedelta(hours=h // 5) for h in range(50)],
                         "amount": [float(h // 5) for h in range(50)]})
    a = split_by_time(same, "event_timestamp", 0.2, 0.2)[2]
    b = split_by_time(same.sample(frac=1.0, random_state=1), "event_timestamp", 0.2, 0.2)[2]
    pd.testing.assert_frame_equal(a, b)
    assert frame_digest(a) == frame_digest(b)


def test_a_key_column_missing_from_the_data_is_named():
    with pytest.raises(PreprocessError, match=r"key column\(s\) \['order_id'\] \(training.key_columns\)"):
        split_by_time(_frame(), "event_timestamp", 0.2, 0.2, key_columns=("transaction_id", "order_id"))


def test_split_rejects_missing_timestamp_and_bad_fractions():
    with pytest.raises(PreprocessError, match="ts_missing"):
        split_by_time(_frame(), "ts_missing", 0.1, 0.1)
    with pytest.raises(PreprocessError, match="fractions"):
        split_by_time(_frame(), "event_timestamp", 0.0, 0.1)


def test_frame_digest_uses_keys_and_detects_changes():
    df = _frame(60)
    holdout = split_by_time(df, "event_timestamp", 0.2, 0.3, key_columns=KEYS)[2]
    digest, basis = frame_digest(holdout, KEYS)
    assert basis == "keys:transaction_id"
    same = split_by_time(df.sample(frac=1.0, random_state=3), "event_timestamp", 0.2, 0.3, key_columns=KEYS)[2]
    assert frame_digest(same, KEYS)[0] == digest
    assert frame_digest(holdout.iloc[1:], KEYS)[0] != digest
    digest_rows, basis_rows = frame_digest(holdout)  # no key columns: every column's values
    assert basis_rows.startswith("rows:") and len(digest_rows) == 64


# ---------------------------------------------------------------------------------------------- features
def test_fit_uses_train_statistics_only():
    train = pd.DataFrame({"a": [1.0, 2.0, 3.0], "c": ["x", "y", "x"]})
    pre = Preprocessor.fit(train, ["a"], ["c"])
    assert pre.means.tolist() == [2.0]
    assert pre.stds[0] == pytest.approx(np.std([1.0, 2.0, 3.0]))
    assert pre.categories == {"c": ["x", "y"]}
    assert pre.output_dim == 1 + 3
    assert pre.feature_names == ["a", "c=x", "c=y", f"c={UNKNOWN}"]
    out = pre.transform(pd.DataFrame({"a": [2.0, 100.0], "c": ["y", "x"]}))
    assert out.dtype == np.float32 and out.shape == (2, 4)
    assert out[0, 0] == 0.0 and out[1, 0] == pytest.approx(98 / np.std([1.0, 2.0, 3.0]), rel=1e-6)


def test_missing_values_and_unseen_categories():
    train = pd.DataFrame({"a": [1.0, np.nan, 3.0], "n": [1, 2, 3], "c": ["x", None, "y"]})
    pre = Preprocessor.fit(train, ["a", "n"], ["c"])
    assert pre.means[0] == 2.0  # NaN ignored when fitting
    assert pre.categories["c"] == ["x", "y"]  # None is not a category
    test = pd.DataFrame({"a": [np.nan, np.inf, 2.0], "n": [2, 2, 2], "c": [None, "zzz", "x"]})
    out = pre.transform(test)
    assert out[:, 0].tolist() == [0.0, 0.0, 0.0]  # NaN/inf -> 0 after standardization (2.0 is the mean)
    onehot = out[:, 2:]
    assert onehot.tolist() == [[0, 0, 1], [0, 0, 1], [1, 0, 0]]
    assert np.all(onehot.sum(axis=1) == 1)


def test_constant_and_boolean_columns():
    train = pd.DataFrame({"k": [5.0, 5.0, 5.0], "b": [True, False, True]})
    pre = Preprocessor.fit(train, ["k", "b"], [])
    assert pre.stds[0] == 1.0  # no division by zero
    out = pre.transform(pd.DataFrame({"k": [5.0, 6.0], "b": [False, True]}))
    assert out[:, 0].tolist() == [0.0, 1.0]
    assert np.all(np.isfinite(out))


def test_missing_column_at_transform_is_named():
    pre = Preprocessor.fit(pd.DataFrame({"a": [1.0, 2.0], "c": ["x", "y"]}), ["a"], ["c"])
    with pytest.raises(PreprocessError, match=r"\['c'\]"):
        pre.transform(pd.DataFrame({"a": [1.0]}))
    with pytest.raises(PreprocessError, match="zz"):
        Preprocessor.fit(pd.DataFrame({"a": [1.0]}), ["a", "zz"], [])


def test_non_numeric_values_in_numeric_feature():
    pre = Preprocessor.fit(pd.DataFrame({"a": [1.0, 2.0]}), ["a"], [])
    with pytest.raises(PreprocessError, match="'a'"):
        pre.transform(pd.DataFrame({"a": ["one", "two"]}))


def test_round_trip_through_json_gives_identical_output():
    df = _frame(80)
    pre = Preprocessor.fit(df, ["amount", "count"], ["channel"])
    again = Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert again == pre
    np.testing.assert_array_equal(pre.transform(df), again.transform(df))
    assert len(again.feature_names) == again.output_dim == 2 + 4
    with pytest.raises(PreprocessError, match="version"):
        Preprocessor.from_dict({**pre.to_dict(), "version": 99})


def test_categorical_dtype_and_numbers_as_categories():
    train = pd.DataFrame({"c": pd.Categorical(["a", "b", "a"]), "m": [1, 2, 1]})
    pre = Preprocessor.fit(train, [], ["c", "m"])
    assert pre.categories == {"c": ["a", "b"], "m": ["1", "2"]}
    out = pre.transform(pd.DataFrame({"c": ["b"], "m": [2]}))
    assert out.tolist() == [[0, 1, 0, 0, 1, 0]]


# ---------------------------------------------------------------------------------------------- loop helpers
@pytest.mark.parametrize(("n", "world"), [(10, 1), (10, 2), (11, 2), (10, 3), (1025, 4)])
def test_shards_are_disjoint_and_equal_sized(n, world):
    shards = [shard_rows(n, r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == n // world
    flat = np.concatenate(shards)
    assert len(set(flat.tolist())) == len(flat)
    assert all(np.all(s % world == r) for r, s in enumerate(shards))


def test_ranking_metrics_handle_degenerate_labels():
    roc, pr = ranking_metrics(np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.2, 0.8]))
    assert roc == 1.0 and pr == 1.0
    assert all(math.isnan(v) for v in ranking_metrics(np.array([0, 0]), np.array([0.1, 0.2])))
    assert all(math.isnan(v) for v in ranking_metrics(np.array([0, 1]), np.array([np.nan, 0.2])))


def test_early_stopping_rule():
    history = [{"epoch": e, "val_loss": v} for e, v in enumerate([1.0, 0.8, 0.85, 0.9], start=1)]
    assert not _stop_early(history, None)
    assert not _stop_early(history[:3], 2)
    assert _stop_early(history, 2)
    assert not _stop_early(history, 3)
