"""Data-quality gate: the demo suite on small synthetic frames (plain GE, no Airflow)."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "true")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from gd_provider.core.quality import (  # noqa: E402
    ValidationConfigError,
    ValidationReport,
    build_suite,
    default_expectations,
    validate_dataframe,
    write_report,
)
from gd_provider.demo import schema  # noqa: E402
from gd_provider.demo.expectations import FEAST_JOINED_COLUMNS, fraud_expectations  # noqa: E402

INTERVAL_END = "2024-02-01T00:00:00+00:00"
N = 400


def make_frame(n: int = N, seed: int = 0) -> pd.DataFrame:
    """A clean training frame with the demo columns (int64/float64, UTC timestamps in January 2024)."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            schema.TRANSACTION_ID: [f"t{i:06d}" for i in range(n)],
            "card_id": rng.integers(0, 50, n),
            "merchant_id": rng.integers(0, 30, n),
            schema.TIMESTAMP: pd.Timestamp("2024-01-01", tz="UTC")
            + pd.to_timedelta(rng.integers(0, 30 * 86400, n), unit="s"),
            schema.LABEL: (np.arange(n) % 20 == 0).astype("int64"),  # 5% positives
            "amount": rng.lognormal(3, 1, n),
            "hour_of_day": rng.integers(0, 24, n),
            "is_foreign": rng.integers(0, 2, n),
            "is_online": rng.integers(0, 2, n),
            "distance_from_home_km": rng.exponential(10, n),
            "channel": rng.choice(list(schema.CHANNELS), n),
        }
    )
    for col in schema.CARD_FEATURES + schema.MERCHANT_NUMERIC:
        df[col] = rng.gamma(2.0, 2.0, n)
    df["merchant_category"] = rng.choice(list(schema.MERCHANT_CATEGORIES), n)
    return df


def failed(report: ValidationReport) -> set[tuple[str | None, str | None]]:
    """(check, column) of every failing expectation."""
    return {(f["check"], f["column"]) for f in report.failures}


@pytest.fixture(scope="module")
def suite() -> list[dict]:
    return fraud_expectations(INTERVAL_END)


def run(df: pd.DataFrame, suite: list[dict]) -> ValidationReport:
    return validate_dataframe(df, suite)


def test_demo_suite_covers_all_columns(suite):
    exists = {e["kwargs"]["column"] for e in suite if e["type"] == "expect_column_to_exist"}
    assert exists == {
        schema.TRANSACTION_ID,
        *schema.ENTITY_KEYS,
        schema.TIMESTAMP,
        schema.LABEL,
        *schema.FEATURES,
    }
    not_null = {
        e["kwargs"]["column"]: e["kwargs"].get("mostly", 1.0)
        for e in suite
        if e["type"] == "expect_column_values_to_not_be_null"
    }
    assert not_null["amount"] == 1.0 and not_null[schema.LABEL] == 1.0
    assert all(not_null[c] == pytest.approx(0.98) for c in FEAST_JOINED_COLUMNS)
    json.dumps(suite)  # portable


def test_clean_frame_passes(suite):
    report = run(make_frame(), suite)
    assert report.success, report.summary()
    assert report.failures == []
    assert report.evaluated == len(suite)
    assert report.summary().startswith(f"All {len(suite)} expectations passed")
    json.dumps(report.result_json)


def test_missing_column(suite):
    report = run(make_frame().drop(columns=["card_avg_amount_7d"]), suite)
    assert not report.success
    assert failed(report) == {
        ("exists", "card_avg_amount_7d"),
        ("not_null", "card_avg_amount_7d"),
        ("numeric_dtype", "card_avg_amount_7d"),
        ("finite", "card_avg_amount_7d"),
    }
    text = report.summary()
    assert "expect_column_to_exist(card_avg_amount_7d)" in text
    assert "column 'card_avg_amount_7d' not found" in text


def test_wrong_dtype(suite):
    df = make_frame()
    df["amount"] = df["amount"].round(2).astype(str)
    report = run(df, suite)
    assert ("numeric_dtype", "amount") in failed(report)
    assert "expect_column_values_to_be_in_type_list(amount)" in report.summary()


def test_nan_and_inf(suite):
    df = make_frame()
    df.loc[3, "amount"] = np.nan
    df.loc[4, "distance_from_home_km"] = np.inf
    df.loc[5, "card_avg_amount_7d"] = -np.inf
    report = run(df, suite)
    assert failed(report) == {
        ("not_null", "amount"),
        ("finite", "distance_from_home_km"),
        ("finite", "card_avg_amount_7d"),
    }
    text = report.summary()
    assert "expect_column_values_to_not_be_null(amount) [not_null]: 1 of 400 rows unexpected" in text
    assert "expect_column_values_to_be_between(distance_from_home_km) [finite]" in text
    assert "-inf" in text


def test_feast_features_allow_a_few_nulls(suite):
    df = make_frame()
    df.loc[df.index[:4], "card_txn_count_7d"] = np.nan  # 1% <= 2%
    df.loc[df.index[:4], "merchant_category"] = None
    assert run(df, suite).success
    df.loc[df.index[:20], "card_txn_count_7d"] = np.nan  # 5% > 2%
    report = run(df, suite)
    assert failed(report) == {("not_null", "card_txn_count_7d")}
    assert "20 of 400 rows unexpected (5.00%), at most 2.00% allowed" in report.summary()


def test_all_null_column(suite):
    df = make_frame()
    df["merchant_risk_score"] = np.nan
    report = run(df, suite)
    assert failed(report) == {("not_null", "merchant_risk_score")}
    assert "400 of 400 rows unexpected (100.00%)" in report.summary()


def test_empty_frame_fails_without_raising(suite):
    report = run(make_frame().iloc[:0], suite)
    assert not report.success
    assert ("row_count", None) in failed(report)
    assert ("both_classes", schema.LABEL) in failed(report)
    assert "expect_table_row_count_to_be_between [row_count]: observed 0" in report.summary()
    # Even a frame without columns gives a report.
    assert not validate_dataframe(pd.DataFrame(), suite).success


def test_single_class_label(suite):
    df = make_frame()
    df[schema.LABEL] = 0
    report = run(df, suite)
    assert failed(report) == {("both_classes", schema.LABEL), ("positive_rate", schema.LABEL)}
    assert (
        "expect_column_distinct_values_to_contain_set(is_fraud) [both_classes]: missing values [1]"
        in report.summary()
    )


def test_label_values_and_positive_rate(suite):
    df = make_frame()
    df.loc[1, schema.LABEL] = 2
    assert failed(run(df, suite)) == {("binary_label", schema.LABEL)}
    df = make_frame()
    df[schema.LABEL] = np.arange(len(df)) % 2  # 50% positives > 20%
    report = run(df, suite)
    assert failed(report) == {("positive_rate", schema.LABEL)}
    assert "observed 0.5, expected [0.002, 0.2]" in report.summary()


def test_duplicate_transactions(suite):
    df = make_frame()
    dup = pd.concat([df, df.iloc[[7]]], ignore_index=True)
    report = run(dup, suite)
    assert failed(report) == {("unique_key", schema.TRANSACTION_ID)}
    assert "expect_column_values_to_be_unique(transaction_id)" in report.summary()


def test_compound_key_uniqueness():
    keys = ["card_id", schema.TIMESTAMP, schema.TRANSACTION_ID]
    exps = default_expectations(required_columns=keys, numeric_columns=[], unique_key_columns=keys)
    df = make_frame()[keys]
    # Same card and time but another transaction: allowed.
    twin = df.iloc[[3]].assign(**{schema.TRANSACTION_ID: "other"})
    assert validate_dataframe(pd.concat([df, twin], ignore_index=True), exps).success
    report = validate_dataframe(pd.concat([df, df.iloc[[3]]], ignore_index=True), exps)
    assert failed(report) == {("unique_key", ",".join(keys))}
    assert "expect_compound_columns_to_be_unique(card_id,event_timestamp,transaction_id)" in report.summary()


def test_timestamps_after_interval_end(suite):
    df = make_frame()
    df.loc[[1, 2], schema.TIMESTAMP] = pd.Timestamp("2024-02-03", tz="UTC")
    report = run(df, suite)
    assert failed(report) == {("not_after_interval_end", schema.TIMESTAMP)}
    assert "2 of 400 rows unexpected" in report.summary()
    assert "2024-02-03T00:00:00+00:00" in report.summary()
    # Without an interval end there is no such check.
    assert not any(e["meta"]["gd_check"] == "not_after_interval_end" for e in fraud_expectations())


def test_negative_amount(suite):
    df = make_frame()
    df.loc[9, "amount"] = -5.0
    report = run(df, suite)
    assert failed(report) == {("non_negative", "amount")}
    assert (
        "expect_column_values_to_be_between(amount) [non_negative]: 1 of 400 rows unexpected"
        in report.summary()
    )


def test_out_of_set_category(suite):
    df = make_frame()
    df.loc[0, "channel"] = "teleport"
    df.loc[1, "merchant_category"] = "casino"
    report = run(df, suite)
    assert failed(report) == {("category_set", "channel"), ("category_set", "merchant_category")}
    assert "'teleport'" in report.summary() and "'casino'" in report.summary()


def test_small_dtypes_pass_and_split_matches_single_batch(suite):
    df = make_frame()
    df["is_foreign"] = df["is_foreign"].astype(bool)
    df["hour_of_day"] = df["hour_of_day"].astype("int32")
    df["amount"] = df["amount"].astype("float32")
    df.loc[2, "amount"] = np.inf
    split = validate_dataframe(df, suite)
    single = validate_dataframe(df, suite, split_by_column=False)
    assert failed(split) == failed(single) == {("finite", "amount")}
    assert [r["success"] for r in split.results] == [r["success"] for r in single.results]


def test_failure_entries_and_report_files(suite, tmp_path):
    df = make_frame()
    df.loc[9, "amount"] = -5.0
    report = run(df, suite)
    (entry,) = report.failures
    assert entry["expectation"] == "expect_column_values_to_be_between"
    assert entry["column"] == "amount"
    assert entry["kwargs"]["min_value"] == 0
    assert "1 of 400 rows unexpected" in entry["observed"]
    assert report.elapsed_s > 0

    paths = write_report(report, tmp_path / "out")
    payload = json.loads(Path(paths["json"]).read_text())
    assert payload["success"] is False and payload["summary"] == report.summary()
    assert len(payload["result_json"]["results"]) == len(suite)
    html = Path(paths["html"]).read_text()
    assert "<table>" in html and "expect_column_values_to_be_between" in html and "FAIL" in html


def test_build_suite_errors():
    with pytest.raises(ValidationConfigError, match="expect_column_to_be_awesome"):
        build_suite([{"type": "expect_column_to_be_awesome", "kwargs": {"column": "a"}}], "s")
    with pytest.raises(ValidationConfigError, match="expect_column_values_to_not_be_null"):
        build_suite([{"type": "expect_column_values_to_not_be_null", "kwargs": {"colum": "a"}}], "s")
    with pytest.raises(ValidationConfigError):
        build_suite([{"kwargs": {}}], "s")
    suite = build_suite([{"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "a"}}], "s")
    assert suite.name == "s" and len(suite.expectations) == 1


def test_default_expectations_argument_checks():
    with pytest.raises(ValidationConfigError):
        default_expectations(required_columns=["a"], numeric_columns=[], min_rows=10, max_rows=5)
    with pytest.raises(ValidationConfigError):
        default_expectations(required_columns=["a"], numeric_columns=[], positive_rate_bounds=(0.1, 0.2))
    with pytest.raises(ValidationConfigError):
        default_expectations(required_columns=["a"], numeric_columns=["a"], non_negative_columns=["b"])
    with pytest.raises(ValidationConfigError):
        default_expectations(required_columns=["a"], numeric_columns=[], data_interval_end="2024-01-01")


def _tricky_frames() -> dict[str, pd.DataFrame]:
    base = make_frame()
    nan_inf = base.copy()
    nan_inf.loc[3, "amount"] = np.nan
    nan_inf.loc[4, "distance_from_home_km"] = np.inf
    nan_inf.loc[5, "card_avg_amount_7d"] = -np.inf
    mostly = base.copy()
    mostly.loc[mostly.index[:8], "card_txn_count_7d"] = np.nan  # 2 % of 400: exactly the allowance
    mostly.loc[mostly.index[:9], "merchant_risk_score"] = np.nan  # just over it
    small = base.copy()
    small["amount"] = small["amount"].astype("float32")
    small["hour_of_day"] = small["hour_of_day"].astype("int8")
    small.loc[7, "hour_of_day"] = 30
    return {
        "clean": base,
        "nan_inf": nan_inf,
        "missing_column": base.drop(columns=["card_avg_amount_7d", schema.LABEL]),
        "empty": base.iloc[:0],
        "no_columns": pd.DataFrame(),
        "mostly": mostly,
        "small_dtypes": small,
        "single_class": base.assign(**{schema.LABEL: 0}),
    }


@pytest.mark.parametrize("case", list(_tricky_frames()))
def test_fast_pass_gives_the_verdicts_and_details_of_one_summary_pass(suite, case):
    df = _tricky_frames()[case]
    fast = validate_dataframe(df, suite)
    slow = validate_dataframe(df, suite, fast_pass=False)
    assert [r["success"] for r in fast.results] == [r["success"] for r in slow.results]
    assert fast.success == slow.success and fast.evaluated == slow.evaluated == len(suite)
    # every failure carries the same SUMMARY details as in a single SUMMARY pass
    assert fast.failures == slow.failures
    assert fast.summary() == slow.summary()
    fmt = fast.result_json["meta"]["result_format"]
    assert fmt == {"first_pass": "BOOLEAN_ONLY", "details": "SUMMARY", "detailed_expectations": fast.failed}
    assert slow.result_json["meta"]["result_format"]["first_pass"] == "SUMMARY"
    if case == "clean":
        assert fast.success
    else:
        assert not fast.success


def test_fast_pass_details_only_what_failed(suite):
    df = make_frame()
    df.loc[[3, 4], "amount"] = np.nan
    report = validate_dataframe(df, suite)
    assert failed(report) == {("not_null", "amount")}
    (entry,) = report.failures
    assert entry["observed"].startswith("2 of 400 rows unexpected (0.50%)")
    assert "e.g. [nan, nan]" in entry["observed"]
    passed = {(r["check"], r["column"]): r["observed"] for r in report.results if r["success"]}
    assert passed[("exists", "amount")] == "column exists"
    assert passed[("finite", "amount")] == "passed"  # verdict only: no counts were computed for it
    assert passed[("row_count", None)] == "passed" or passed[("row_count", None)].startswith("observed 400")
    # the GE result of the failure is the SUMMARY one, the others BOOLEAN_ONLY
    results = report.result_json["results"]
    detailed = [r for r in results if r["result"].get("unexpected_count") is not None]
    assert len(detailed) == 1 and detailed[0]["expectation_config"]["kwargs"]["column"] == "amount"
    # BOOLEAN_ONLY throughout: verdicts only, even for the failure
    quick = validate_dataframe(df, suite, result_format="BOOLEAN_ONLY")
    assert failed(quick) == failed(report)
    assert quick.result_json["meta"]["result_format"]["details"] is None


def test_report_notes_are_shown(suite, tmp_path):
    report = run(make_frame(), suite)
    report.notes = ["champion-derived checks SKIPPED: no champion yet"]
    assert report.summary().endswith("\nNote: champion-derived checks SKIPPED: no champion yet")
    paths = write_report(report, tmp_path)
    assert "champion-derived checks SKIPPED" in Path(paths["html"]).read_text()
    assert json.loads(Path(paths["json"]).read_text())["notes"] == report.notes


def test_great_expectations_info_noise_stays_out_of_the_task_log():
    """A fresh process at INFO, as a task runs: importing and validating logs no GE INFO lines."""
    import subprocess
    import sys

    code = (
        "import logging, pandas as pd\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "n = []\n"
        "class H(logging.Handler):\n"
        "    def emit(self, r):\n"
        "        n.append(r) if r.name.startswith('great_expectations') and r.levelno < logging.WARNING else None\n"
        "logging.getLogger().addHandler(H())\n"
        "from gd_provider.core.quality import validate_dataframe\n"
        "r = validate_dataframe(pd.DataFrame({'a': [1, None]}), "
        "[{'type': 'expect_column_values_to_not_be_null', 'kwargs': {'column': 'a'}}])\n"
        "print(len(n), r.success)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[-2:] == ["0", "False"]
