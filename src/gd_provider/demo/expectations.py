"""The demo's data-quality suite for the fraud training dataset (label source joined with Feast features)."""

from __future__ import annotations

from typing import Any

from gd_provider.core.quality import default_expectations
from gd_provider.demo import schema

# Columns that arrive with the label source: one row per transaction, never null.
TRANSACTION_COLUMNS = (
    schema.TRANSACTION_ID,
    *schema.ENTITY_KEYS,
    schema.TIMESTAMP,
    schema.LABEL,
    *schema.TRANSACTION_NUMERIC,
    *schema.TRANSACTION_CATEGORICAL,
)
# Feast-joined snapshot features: a new card/merchant may lack a snapshot within the view's TTL.
FEAST_JOINED_COLUMNS = (*schema.CARD_FEATURES, *schema.MERCHANT_NUMERIC, *schema.MERCHANT_CATEGORICAL)
FEAST_MAX_NULL_FRACTION = 0.02

NON_NEGATIVE_COLUMNS = (
    "amount",
    "distance_from_home_km",
    "hour_of_day",
    "is_foreign",
    "is_online",
    "card_txn_count_7d",
    "card_distinct_merchants_7d",
    "card_std_amount_7d",
    "card_age_days",
    "merchant_txn_count_30d",
)
POSITIVE_RATE_BOUNDS = (0.002, 0.2)
DEFAULT_MIN_ROWS = 100


def fraud_expectations(
    data_interval_end: str | None = None,
    *,
    min_rows: int = DEFAULT_MIN_ROWS,
    max_rows: int | None = None,
) -> list[dict[str, Any]]:
    """Portable expectation list for the demo training dataset.

    ``data_interval_end`` (ISO-8601, tz-aware like the UTC ``event_timestamp`` column) adds the
    "no event after the interval end" check; leave it ``None`` to skip that check.
    """
    exps = default_expectations(
        required_columns=[*TRANSACTION_COLUMNS, *schema.FEATURES],
        numeric_columns=list(schema.NUMERIC_FEATURES),
        non_negative_columns=list(NON_NEGATIVE_COLUMNS),
        categorical_sets={
            "channel": list(schema.CHANNELS),
            "merchant_category": list(schema.MERCHANT_CATEGORIES),
        },
        label_column=schema.LABEL,
        min_rows=min_rows,
        max_rows=max_rows,
        positive_rate_bounds=POSITIVE_RATE_BOUNDS,
        max_null_fraction=0.0,
        max_null_fractions={c: FEAST_MAX_NULL_FRACTION for c in FEAST_JOINED_COLUMNS},
        timestamp_column=schema.TIMESTAMP,
        data_interval_end=data_interval_end,
        unique_key_columns=[schema.TRANSACTION_ID],
    )
    # Domain ranges beyond the generic defaults.
    exps += [
        {
            "type": "expect_column_values_to_be_between",
            "kwargs": {"column": "hour_of_day", "min_value": 0, "max_value": 23},
            "meta": {"gd_check": "hour_range"},
        },
        {
            "type": "expect_column_values_to_be_in_set",
            "kwargs": {"column": "is_foreign", "value_set": [0, 1]},
            "meta": {"gd_check": "binary_flag"},
        },
        {
            "type": "expect_column_values_to_be_in_set",
            "kwargs": {"column": "is_online", "value_set": [0, 1]},
            "meta": {"gd_check": "binary_flag"},
        },
    ]
    return exps
