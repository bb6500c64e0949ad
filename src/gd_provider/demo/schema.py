"""The demo domain's data contract: synthetic card transactions for fraud detection.

Every module that touches the demo data (generator, Feast repo, validation defaults, training spec)
reads the column names from here, so there is exactly one place that defines them.
"""

from __future__ import annotations

ENTITY_KEYS = ("card_id", "merchant_id")
TIMESTAMP = "event_timestamp"
TRANSACTION_ID = "transaction_id"
LABEL = "is_fraud"

# Columns that arrive with the label source (one row per transaction).
TRANSACTION_NUMERIC = ("amount", "hour_of_day", "is_foreign", "is_online", "distance_from_home_km")
TRANSACTION_CATEGORICAL = ("channel",)
CHANNELS = ("pos", "online", "atm", "contactless")

# Feast feature view ``card_stats`` (entity ``card``; daily snapshots).
CARD_FEATURES = (
    "card_txn_count_7d",
    "card_avg_amount_7d",
    "card_std_amount_7d",
    "card_chargeback_rate_90d",
    "card_age_days",
    "card_credit_limit",
    "card_distinct_merchants_7d",
)
# Feast feature view ``merchant_stats`` (entity ``merchant``; daily snapshots).
MERCHANT_NUMERIC = (
    "merchant_fraud_rate_30d",
    "merchant_avg_amount_30d",
    "merchant_txn_count_30d",
    "merchant_risk_score",
)
MERCHANT_CATEGORICAL = ("merchant_category",)
MERCHANT_CATEGORIES = ("grocery", "electronics", "travel", "gaming", "fuel", "restaurant", "fashion")

FEATURE_SERVICE = "fraud_model_v1"
CARD_VIEW = "card_stats"
MERCHANT_VIEW = "merchant_stats"

NUMERIC_FEATURES = TRANSACTION_NUMERIC + CARD_FEATURES + MERCHANT_NUMERIC
CATEGORICAL_FEATURES = TRANSACTION_CATEGORICAL + MERCHANT_CATEGORICAL
FEATURES = NUMERIC_FEATURES + CATEGORICAL_FEATURES
FEAST_FEATURE_REFS = tuple(f"{CARD_VIEW}:{c}" for c in CARD_FEATURES) + tuple(
    f"{MERCHANT_VIEW}:{c}" for c in MERCHANT_NUMERIC + MERCHANT_CATEGORICAL
)

# Columns that order rows sharing a timestamp (the split and the holdout digest are the same on every run).
KEY_COLUMNS = (TRANSACTION_ID, *ENTITY_KEYS)


def training_spec(**overrides: object) -> object:
    """The fraud demo's :class:`~gd_provider.core.training.spec.TrainingSpec` (its columns), validated."""
    from gd_provider.core.training.spec import TrainingSpec

    base = TrainingSpec(
        numeric_features=tuple(NUMERIC_FEATURES),
        categorical_features=tuple(CATEGORICAL_FEATURES),
        label=LABEL,
        timestamp_column=TIMESTAMP,
        key_columns=KEY_COLUMNS,
    )
    return base.with_overrides(dict(overrides))
