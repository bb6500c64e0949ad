"""Data-quality suites of the demand training sets (the sales label source joined with the Feast views).

``units_expectations`` for the regression model (label ``units_sold``), ``level_expectations`` for the
multiclass model (label ``demand_level``). Name them in a config as
``gd_provider.demo.demand.expectations:units_expectations``: the validation task imports them, so parsing
the DAG file never imports Great Expectations.
"""

from __future__ import annotations

from typing import Any

from gd_provider.core.quality import default_expectations
from gd_provider.demo.demand import schema

# Columns that arrive with the label source, never null.
SALE_COLUMNS = (schema.SALE_ID, *schema.ENTITY_KEYS, schema.TIMESTAMP, *schema.SALE_NUMERIC)
# A new store or product may lack a snapshot within the view's TTL.
FEAST_MAX_NULL_FRACTION = 0.02
NON_NEGATIVE_COLUMNS = (
    "price", "discount_pct", "promo", "day_of_week", "is_holiday", "base_price", "product_avg_units_7d",
    "product_avg_units_28d", "store_size_sqm", "footfall_7d", "store_avg_units_7d", "sp_avg_units_7d",
    "sp_avg_units_28d",
)
MAX_UNITS = 100_000.0  # one store, one product, one day: more is a unit or key error upstream
DEFAULT_MIN_ROWS = 100


def _exp(kind: str, check: str, **kwargs: Any) -> dict[str, Any]:
    return {"type": kind, "kwargs": kwargs, "meta": {"gd_check": check}}


def _common(data_interval_end: str | None, label: str, min_rows: int, max_rows: int | None) -> list[dict[str, Any]]:
    exps = default_expectations(
        required_columns=[*SALE_COLUMNS, *schema.FEATURES, label],
        numeric_columns=list(schema.NUMERIC_FEATURES),
        non_negative_columns=list(NON_NEGATIVE_COLUMNS),
        categorical_sets={"category": list(schema.CATEGORIES), "region": list(schema.REGIONS)},
        min_rows=min_rows,
        max_rows=max_rows,
        max_null_fraction=0.0,
        max_null_fractions=dict.fromkeys(schema.FEAST_JOINED, FEAST_MAX_NULL_FRACTION),
        timestamp_column=schema.TIMESTAMP,
        data_interval_end=data_interval_end,
        unique_key_columns=[schema.SALE_ID],
    )
    exps += [
        _exp("expect_column_values_to_not_be_null", "label_not_null", column=label),
        _exp("expect_column_values_to_be_between", "day_of_week_range", column="day_of_week", min_value=0, max_value=6),
        _exp("expect_column_values_to_be_in_set", "binary_flag", column="promo", value_set=[0, 1]),
        _exp("expect_column_values_to_be_in_set", "binary_flag", column="is_holiday", value_set=[0, 1]),
        _exp("expect_column_values_to_be_between", "discount_range", column="discount_pct", min_value=0,
             max_value=90),
        _exp("expect_column_values_to_be_between", "positive_price", column="price", min_value=0.01),
        _exp("expect_compound_columns_to_be_unique", "one_row_per_store_product_day",
             column_list=[*schema.ENTITY_KEYS, schema.TIMESTAMP]),
    ]
    return exps


def units_expectations(
    data_interval_end: str | None = None, *, min_rows: int = DEFAULT_MIN_ROWS, max_rows: int | None = None
) -> list[dict[str, Any]]:
    """The regression model's suite: the common checks plus ``units_sold`` numeric, present, in
    ``[0, MAX_UNITS]``."""
    label = schema.LABEL_UNITS
    return [
        *_common(data_interval_end, label, min_rows, max_rows),
        _exp("expect_column_values_to_be_in_type_list", "numeric_label", column=label,
             type_list=["int32", "int64", "float32", "float64"]),
        _exp("expect_column_values_to_be_between", "units_range", column=label, min_value=0, max_value=MAX_UNITS),
    ]


def level_expectations(
    data_interval_end: str | None = None, *, min_rows: int = DEFAULT_MIN_ROWS, max_rows: int | None = None
) -> list[dict[str, Any]]:
    """The multiclass model's suite: the common checks plus ``demand_level`` in the declared classes
    (``schema.DEMAND_LEVELS``, the model's ``task_options.classes``), each class present."""
    label = schema.LABEL_LEVEL
    levels = list(schema.DEMAND_LEVELS)
    return [
        *_common(data_interval_end, label, min_rows, max_rows),
        _exp("expect_column_values_to_be_in_set", "declared_classes", column=label, value_set=levels),
        _exp("expect_column_distinct_values_to_contain_set", "every_class_present", column=label, value_set=levels),
    ]
