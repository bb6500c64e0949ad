"""The demo's retraining settings, shared by the nightly DAG, the example DAGs and the tests."""

from __future__ import annotations

from datetime import timedelta

from gd_provider.demo import schema

MODEL_NAME = "fraud_detector"
LABEL_SOURCE = "feature_repo/data/transactions"  # relative to the project home
LOOKBACK = timedelta(days=21)

TRAINING_SPEC: dict = {
    "numeric_features": list(schema.NUMERIC_FEATURES),
    "categorical_features": list(schema.CATEGORICAL_FEATURES),
    "label": schema.LABEL,
    "timestamp_column": schema.TIMESTAMP,
    "key_columns": list(schema.KEY_COLUMNS),
    "hidden_sizes": [64, 32],
    "optimizer": "adam",
    "lr": 0.003,
    "batch_size": 512,
    "epochs": 6,
    "grad_clip_norm": 1.0,
    "seed": 42,
    "num_workers": 2,
    "cpus_per_worker": 0.5,
}

# What the training health gate tolerates (gd_provider.core.training.health.HealthThresholds).
HEALTH_THRESHOLDS: dict = {
    "allow_diverged": False,
    "max_nonfinite_steps": 0,
    "max_clipped_share": 0.5,
    "require_sensitivity_pass": None,  # judged when it ran (the example DAGs train without it)
}

GATE_POLICY: dict = {
    "decision_threshold": 0.5,
    "value_thresholds": {"roc_auc": 0.75, "pr_auc": 0.15},
    "max_abs_regression": {"roc_auc": 0.01, "pr_auc": 0.02},
    "bootstrap": "bless_if_value_thresholds_pass",
}

RETRIEVAL: dict = {
    "label_source": LABEL_SOURCE,
    "feature_service": schema.FEATURE_SERVICE,
    "entity_keys": list(schema.ENTITY_KEYS),
    "timestamp_column": schema.TIMESTAMP,
    "label_column": schema.LABEL,
    "sort_by": [schema.TIMESTAMP, schema.TRANSACTION_ID],
    "lookback": LOOKBACK,
}

DRIFT: dict = {
    "numeric_columns": list(schema.NUMERIC_FEATURES),
    "categorical_columns": list(schema.CATEGORICAL_FEATURES),
    "numeric_method": "wasserstein",
    "categorical_method": "jensenshannon",
    "threshold": 0.1,
}
