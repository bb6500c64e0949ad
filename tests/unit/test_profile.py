"""Checks derived from a feature-service schema and from the champion's training-data profile (no Airflow)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from gd_provider.core.profile import (  # noqa: E402
    DTYPE_FAMILIES,
    DataProfile,
    ProfileError,
    Tolerances,
    derive_expectations,
    dtype_family,
    profile_dataframe,
    profile_expectations,
    schema_expectations,
)
from gd_provider.core.quality import validate_dataframe  # noqa: E402


def frame(n: int = 1000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "amount": rng.gamma(2.0, 50.0, n),  # >= 0
            "delta": rng.normal(0.0, 1.0, n),  # both signs
            "count_7d": rng.integers(0, 20, n).astype("int64"),
            "channel": rng.choice(["pos", "online", "atm"], n),
            "is_fraud": (np.arange(n) % 25 == 0).astype("int64"),  # 4 %
            "event_timestamp": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(np.arange(n), unit="min"),
        }
    )
    df.loc[df.index[:20], "delta"] = np.nan  # 2 % nulls
    return df


def by_check(exps: list[dict]) -> dict[tuple[str, str | None], dict]:
    return {(e["meta"]["gd_check"], e["kwargs"].get("column")): e for e in exps}


def failed(report) -> set[tuple[str | None, str | None]]:
    return {(f["check"], f["column"]) for f in report.failures}


def test_dtype_families():
    assert dtype_family(np.dtype("int32")) == "numeric" and dtype_family(np.dtype("float32")) == "numeric"
    assert dtype_family(np.dtype("bool")) == "bool"
    assert dtype_family(pd.Series(["a"]).dtype) == "string"
    assert dtype_family(pd.Series(pd.to_datetime(["2026-01-01"], utc=True)).dtype) == "datetime"
    assert dtype_family(pd.Series(pd.Categorical(["a"])).dtype) is None


def test_profile_dataframe_numbers_and_roundtrip():
    df = frame()
    df.loc[df.index[0], "amount"] = np.inf  # not part of min/max
    prof = profile_dataframe(df, label_column="is_fraud", source={"version": "3"})
    assert prof.rows == 1000 and prof.label_column == "is_fraud"
    assert prof.positive_rate == pytest.approx(0.04) and prof.label_classes == [0, 1]
    amount = prof.columns["amount"]
    assert amount.family == "numeric" and amount.dtype == "float64" and amount.null_fraction == 0.0
    assert amount.min == pytest.approx(df["amount"].iloc[1:].min()) and np.isfinite(amount.max)
    assert prof.columns["delta"].null_fraction == pytest.approx(0.02)
    assert prof.columns["channel"].values == ["atm", "online", "pos"]
    assert prof.columns["event_timestamp"].family == "datetime"
    again = DataProfile.from_dict(json.loads(json.dumps(prof.to_dict())))
    assert again == prof
    with pytest.raises(ProfileError, match="label column 'nope'"):
        profile_dataframe(df, label_column="nope")
    with pytest.raises(ProfileError, match="needs 'rows' and 'columns'"):
        DataProfile.from_dict({"rows": 3})


def test_schema_expectations_map_feast_types():
    exps = schema_expectations({"amount": "Float64", "count_7d": "Int64", "channel": "String", "tags": "Array(Int64)",
                                "event_timestamp": "UnixTimestamp"})
    checks = by_check(exps)
    assert {c for c, _ in checks} == {"schema:exists", "schema:dtype_numeric", "schema:dtype_string"}
    assert all(e["meta"]["gd_origin"] == "schema" for e in exps)
    # an Int64 feature with a missing value comes back from the join as float64: same family
    assert "float64" in checks[("schema:dtype_numeric", "count_7d")]["kwargs"]["type_list"]
    for col in ("tags", "event_timestamp"):  # no dtype family: existence only
        assert ("schema:exists", col) in checks and not any(k[1] == col and "dtype" in k[0] for k in checks)
    with pytest.raises(ProfileError):
        schema_expectations({})

    df = frame()
    df["tags"] = [[1]] * len(df)
    assert validate_dataframe(df, exps).success
    bad = df.drop(columns=["count_7d"]).assign(amount=df["amount"].round(2).astype(str))
    report = validate_dataframe(bad, exps)
    assert failed(report) == {("schema:exists", "count_7d"), ("schema:dtype_numeric", "count_7d"),
                              ("schema:dtype_numeric", "amount")}
    assert "expect_column_values_to_be_in_type_list(amount) [schema:dtype_numeric]" in report.summary()


def test_profile_expectations_bounds_from_tolerances():
    prof = profile_dataframe(frame(), label_column="is_fraud")
    tol = Tolerances(null_rate_slack=0.01, range_widening=0.5, row_count_band=(0.5, 3.0), positive_rate_band=2.0)
    exps = profile_expectations(prof, tol, exclude=["event_timestamp"])
    checks = by_check(exps)
    assert all(e["meta"]["gd_origin"] == "champion_profile" for e in exps)
    row = checks[("champion_profile:row_count", None)]["kwargs"]
    assert (row["min_value"], row["max_value"]) == (500, 3000)
    # null rate: the champion's 2 % + 1 % slack; a column without nulls must stay without (at most 1 %)
    assert checks[("champion_profile:null_rate", "delta")]["kwargs"]["mostly"] == pytest.approx(0.97)
    assert checks[("champion_profile:null_rate", "amount")]["kwargs"]["mostly"] == pytest.approx(0.99)
    # a never-negative column keeps 0 as its lower bound; others widen by half their range each side
    amount = checks[("champion_profile:value_range", "amount")]["kwargs"]
    span = prof.columns["amount"].max - prof.columns["amount"].min
    assert amount["min_value"] == 0.0 and amount["max_value"] == pytest.approx(prof.columns["amount"].max + span / 2, rel=1e-5)
    delta = checks[("champion_profile:value_range", "delta")]["kwargs"]
    dspan = prof.columns["delta"].max - prof.columns["delta"].min
    assert delta["min_value"] == pytest.approx(prof.columns["delta"].min - dspan / 2, rel=1e-5)
    assert checks[("champion_profile:category_set", "channel")]["kwargs"]["value_set"] == ["atm", "online", "pos"]
    assert checks[("champion_profile:label_values", "is_fraud")]["kwargs"]["value_set"] == [0, 1]
    rate = checks[("champion_profile:positive_rate", "is_fraud")]["kwargs"]
    assert (rate["min_value"], rate["max_value"]) == (pytest.approx(0.02), pytest.approx(0.08))
    assert ("champion_profile:both_classes", "is_fraud") in checks
    assert not any(k[1] == "event_timestamp" for k in checks)
    # timestamps: GE cannot type-check a tz-aware column, so they get existence and null checks only
    with_ts = by_check(profile_expectations(prof, columns=["event_timestamp"]))
    assert {c for c, col in with_ts if col == "event_timestamp"} == {"champion_profile:exists",
                                                                     "champion_profile:null_rate"}
    assert ("champion_profile:value_range", "is_fraud") not in checks  # the label gets label checks only
    # an absolute band instead of a factor
    abs_rate = by_check(profile_expectations(prof, Tolerances(positive_rate_abs=0.01)))
    kw = abs_rate[("champion_profile:positive_rate", "is_fraud")]["kwargs"]
    assert (kw["min_value"], kw["max_value"]) == (pytest.approx(0.03), pytest.approx(0.05))
    # only some columns
    only = profile_expectations(prof, columns=["amount"])
    assert {e["kwargs"].get("column") for e in only} == {None, "amount", "is_fraud"}  # label checks stay
    with pytest.raises(ProfileError, match=r"\['nope'\] are not in the champion's profile"):
        profile_expectations(prof, columns=["nope"])


def test_derived_checks_catch_drifted_nulls_ranges_categories_and_labels():
    champion = frame(seed=1)
    exps = derive_expectations(
        schema={"amount": "Float64", "count_7d": "Int64", "channel": "String"},
        profile=profile_dataframe(champion, label_column="is_fraud"),
        tolerances=Tolerances(),
        exclude=["event_timestamp"],
    )
    assert validate_dataframe(frame(seed=2), exps).success  # a night like the champion's

    night = frame(seed=2)
    night.loc[night.index[:100], "delta"] = np.nan  # 10 %: above 2 % + 2 %
    night.loc[night.index[5], "amount"] = -3.0  # never negative before
    night.loc[night.index[6], "count_7d"] = 10_000  # far outside [0, 19] widened by its range
    night.loc[night.index[7], "channel"] = "teleport"
    night["is_fraud"] = 0
    report = validate_dataframe(night, exps)
    assert failed(report) == {
        ("champion_profile:null_rate", "delta"),
        ("champion_profile:value_range", "amount"),
        ("champion_profile:value_range", "count_7d"),
        ("champion_profile:category_set", "channel"),
        ("champion_profile:both_classes", "is_fraud"),
        ("champion_profile:positive_rate", "is_fraud"),
    }
    text = report.summary()
    assert ("expect_column_values_to_not_be_null(delta) [champion_profile:null_rate]: 100 of 1000 rows "
            "unexpected (10.00%), at most 4.00% allowed") in text
    assert "expect_column_values_to_be_between(count_7d) [champion_profile:value_range]: 1 of 1000 rows" in text
    assert "e.g. [10000]" in text and "'teleport'" in text


def test_row_count_band_and_empty_profile():
    prof = profile_dataframe(frame(200))
    exps = profile_expectations(prof, Tolerances(row_count_band=(0.5, 1.5)), columns=[])
    assert validate_dataframe(frame(250), exps).success
    assert failed(validate_dataframe(frame(99), exps)) == {("champion_profile:row_count", None)}
    assert failed(validate_dataframe(frame(301), exps)) == {("champion_profile:row_count", None)}
    with pytest.raises(ProfileError, match="no rows"):
        profile_expectations(profile_dataframe(frame(0)))


def test_tolerances_are_checked():
    assert Tolerances.from_dict({"row_count_band": [0.2, 5]}).row_count_band == (0.2, 5)
    for bad in ({"null_rate_slack": 2}, {"range_widening": -1}, {"row_count_band": (1.5, 2)},
                {"positive_rate_band": 0.5}, {"positive_rate_abs": 3}):
        with pytest.raises(ProfileError, match="bad tolerances"):
            Tolerances.from_dict(bad)
    with pytest.raises(ProfileError, match=r"unknown tolerance\(s\) \['nul_rate_slack'\]"):
        Tolerances.from_dict({"nul_rate_slack": 0.1})


def test_dtype_family_lists_are_ge_names():
    # each family check passes on its own kind of column (GE compares dtype names strictly)
    df = pd.DataFrame({
        "i": np.arange(5, dtype="int32"), "f": np.ones(5, dtype="float32"), "b": np.ones(5, dtype=bool),
        "s": list("abcde"),
    })
    fam = {"i": "numeric", "f": "numeric", "b": "bool", "s": "string"}
    exps = [{"type": "expect_column_values_to_be_in_type_list",
             "kwargs": {"column": c, "type_list": DTYPE_FAMILIES[f]}} for c, f in fam.items()]
    report = validate_dataframe(df, exps)
    assert report.success, report.summary()


def test_zero_tolerance_bounds_still_pass_the_champions_own_data():
    """Bounds are rounded outward: with no widening the champion's data passes its own checks."""
    champion = pd.DataFrame({"amount": [0.1234567, 0.5, 7.7654321], "is_fraud": [0, 1, 0]})
    exps = profile_expectations(
        profile_dataframe(champion, label_column="is_fraud"),
        Tolerances(range_widening=0.0, positive_rate_band=1.0),
    )
    bounds = {e["meta"]["gd_check"]: (e["kwargs"]["min_value"], e["kwargs"]["max_value"])
              for e in exps if "min_value" in e["kwargs"] and "column" in e["kwargs"]}
    assert bounds["champion_profile:value_range"] == (0.123456, 7.76544)
    low, high = bounds["champion_profile:positive_rate"]
    assert low <= 1 / 3 <= high and (low, high) == (0.333333, 0.333334)
    assert validate_dataframe(champion, exps).success


def test_range_mostly_lets_a_few_values_stray_through_real_great_expectations():
    import pandas as pd

    from gd_provider.core.profile import Tolerances, profile_dataframe, profile_expectations
    from gd_provider.core.quality import validate_dataframe

    reference = pd.DataFrame({"amount": [float(i) for i in range(1000)], "channel": ["pos", "online"] * 500})
    tonight = reference.copy()
    tonight.loc[:1, "amount"] = 1e9  # two wild values in a thousand
    tonight.loc[2, "channel"] = "kiosk"
    prof = profile_dataframe(reference)
    strict = validate_dataframe(tonight, profile_expectations(prof, Tolerances(range_widening=0.1)))
    assert not strict.success
    loose_exps = profile_expectations(prof, Tolerances(range_widening=0.1, range_mostly=0.99))
    assert {e["kwargs"].get("mostly") for e in loose_exps if e["meta"]["gd_check"].split(":")[1] in
            ("value_range", "category_set")} == {0.99}
    assert validate_dataframe(tonight, loose_exps).success
