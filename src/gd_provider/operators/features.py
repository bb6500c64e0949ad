"""Feast point-in-time retrieval of a training set."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from gd_provider.operators._common import interval, resolve_home_path, run_dir


class FeastHistoricalFeaturesOperator(BaseOperator):
    """Build the training set for this DAG run: entity/label rows from ``label_source`` whose timestamp
    falls in ``[data_interval_end - lookback, data_interval_end)``, joined point-in-time correctly with
    the features of ``feature_service`` (or ``features`` refs). Writes one parquet file under the run's
    folder and returns the dataset manifest (uri, sha256, rows, columns, ...) — never the data.
    """

    template_fields: Sequence[str] = ("label_source", "feature_service", "features")
    ui_color = "#c3e7d7"

    def __init__(
        self,
        *,
        label_source: str,
        feature_service: str | None = None,
        features: list[str] | None = None,
        entity_keys: Sequence[str],
        timestamp_column: str = "event_timestamp",
        label_column: str,
        sort_by: Sequence[str] | None = None,
        lookback: timedelta = timedelta(days=21),
        feast_conn_id: str = "feast_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.label_source = label_source
        self.feature_service = feature_service
        self.features = features
        self.entity_keys = list(entity_keys)
        self.timestamp_column = timestamp_column
        self.label_column = label_column
        self.sort_by = list(sort_by) if sort_by else None
        self.lookback = lookback
        self.feast_conn_id = feast_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from gd_provider.core.features import FeatureRetrievalError, read_label_source, retrieve_training_set
        from gd_provider.hooks.feast import FeastHook

        _, end = interval(context)
        start = end - self.lookback
        store = FeastHook(self.feast_conn_id).get_conn()
        source = resolve_home_path(self.label_source)
        try:
            entity_df = read_label_source(str(source), start, end, timestamp_column=self.timestamp_column)
            self.log.info("Label source %s: %d rows in [%s, %s)", source, len(entity_df), start, end)
            manifest = retrieve_training_set(
                store,
                entity_df,
                out_uri=str(run_dir(context, "data") / "training_set.parquet"),
                feature_service=self.feature_service,
                features=self.features,
                entity_keys=self.entity_keys,
                timestamp_column=self.timestamp_column,
                label_column=self.label_column,
                data_interval=[start.isoformat(), end.isoformat()],
                sort_by=self.sort_by or [self.timestamp_column, *self.entity_keys],
            )
        except FeatureRetrievalError as exc:
            raise AirflowFailException(f"feature retrieval failed: {exc}") from exc
        self.log.info("Training set %s: %d rows, sha256 %s", manifest.uri, manifest.rows, manifest.sha256)
        return manifest.to_dict()
