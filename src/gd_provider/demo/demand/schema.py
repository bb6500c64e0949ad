"""The demand domain's data contract: daily unit sales per store and product, for dynamic pricing.

One row per (store, product, day) in the label source, stamped at the store's close (21:00 UTC), with
the day's shelf price, discount, promotion and calendar, and two labels:

* ``units_sold`` (float: a count, fractional for weighed goods) for the **regression** model (the nightly
  demand forecast the pricing engine optimizes the price against);
* ``demand_level`` in ``low | normal | high`` for the **multiclass** model (the day's sales against the
  store-product's 28-day average: below 0.75x, within, above 1.3x; what replenishment and markdown rules act on).

Features come from three daily-snapshot Feast views of the project ``gd_demand``: ``product_stats``
(entity ``product``), ``store_stats`` (entity ``store``) and ``store_product_stats`` (both entities: a
compound key). Every module of the domain reads the column names from here.
"""

from __future__ import annotations

PROJECT = "gd_demand"
ENTITY_KEYS = ("store_id", "product_id")
TIMESTAMP = "event_timestamp"
SALE_ID = "sale_id"
LABEL_UNITS = "units_sold"
LABEL_LEVEL = "demand_level"
DEMAND_LEVELS = ("low", "normal", "high")  # the multiclass model's classes, in the order of its outputs
LOW_RATIO, HIGH_RATIO = 0.85, 1.2  # units_sold / sp_avg_units_28d below / above: low / high

# Columns that arrive with the label source (one row per store, product and day).
SALE_NUMERIC = ("price", "discount_pct", "promo", "day_of_week", "is_holiday")
SALE_CATEGORICAL: tuple[str, ...] = ()

# Feast feature view ``product_stats`` (entity ``product``; daily snapshots at 00:00 UTC, from earlier days).
PRODUCT_NUMERIC = ("base_price", "product_avg_units_7d", "product_avg_units_28d")
PRODUCT_CATEGORICAL = ("category",)
CATEGORIES = ("grocery", "beverages", "snacks", "household", "personal_care")
# Feast feature view ``store_stats`` (entity ``store``).
STORE_NUMERIC = ("store_size_sqm", "footfall_7d", "store_avg_units_7d")
STORE_CATEGORICAL = ("region",)
REGIONS = ("north", "south", "east", "west")
# Feast feature view ``store_product_stats`` (entities ``store`` and ``product``).
STORE_PRODUCT_NUMERIC = ("sp_avg_units_7d", "sp_avg_units_28d")

PRODUCT_VIEW = "product_stats"
STORE_VIEW = "store_stats"
STORE_PRODUCT_VIEW = "store_product_stats"
VIEWS = (PRODUCT_VIEW, STORE_VIEW, STORE_PRODUCT_VIEW)
FEATURE_SERVICE = "demand_model_v1"

NUMERIC_FEATURES = SALE_NUMERIC + PRODUCT_NUMERIC + STORE_NUMERIC + STORE_PRODUCT_NUMERIC
CATEGORICAL_FEATURES = SALE_CATEGORICAL + PRODUCT_CATEGORICAL + STORE_CATEGORICAL
FEATURES = NUMERIC_FEATURES + CATEGORICAL_FEATURES
FEAST_FEATURE_REFS = (
    tuple(f"{PRODUCT_VIEW}:{c}" for c in PRODUCT_NUMERIC + PRODUCT_CATEGORICAL)
    + tuple(f"{STORE_VIEW}:{c}" for c in STORE_NUMERIC + STORE_CATEGORICAL)
    + tuple(f"{STORE_PRODUCT_VIEW}:{c}" for c in STORE_PRODUCT_NUMERIC)
)
FEAST_JOINED = PRODUCT_NUMERIC + PRODUCT_CATEGORICAL + STORE_NUMERIC + STORE_CATEGORICAL + STORE_PRODUCT_NUMERIC

# Every row of a day shares its timestamp: these order the rows of a day (split and holdout digest stable).
KEY_COLUMNS = (SALE_ID, *ENTITY_KEYS)

TASK_OPTIONS = {"regression": {}, "multiclass": {"classes": list(DEMAND_LEVELS)}}
LABELS = {"regression": LABEL_UNITS, "multiclass": LABEL_LEVEL}


def training_spec(task: str = "regression", **overrides: object) -> object:
    """The demand domain's :class:`~gd_provider.core.training.spec.TrainingSpec` for ``regression``
    (``units_sold``) or ``multiclass`` (``demand_level``), validated."""
    from gd_provider.core.training.spec import TrainingSpec

    if task not in LABELS:
        raise ValueError(f"the demand domain has a regression and a multiclass model, not {task!r}")
    base = TrainingSpec(
        numeric_features=tuple(NUMERIC_FEATURES),
        categorical_features=tuple(CATEGORICAL_FEATURES),
        label=LABELS[task],
        timestamp_column=TIMESTAMP,
        task=task,
        task_options=dict(TASK_OPTIONS[task]),
        key_columns=KEY_COLUMNS,
    )
    return base.with_overrides(dict(overrides))
