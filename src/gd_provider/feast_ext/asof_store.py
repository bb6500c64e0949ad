"""A Feast offline store that answers historical retrieval with DuckDB ``ASOF JOIN``\\ s.

Feast 0.67's ``duckdb`` offline store joins every entity row with every feature row of the same key inside
the view's TTL window and then keeps the newest one per entity row (a range join plus a window). That is
fine for 100k entity rows but takes ~50 s for 1M entity rows over 1M feature rows. An ``ASOF JOIN`` finds
the newest feature row at or before each entity timestamp directly (sort-merge), in about a second.

Use it in ``feature_store.yaml``::

    offline_store:
      type: gd_provider.feast_ext.asof_store.AsofDuckDBOfflineStore

(Feast imports ``<module>.<Class>`` and its config class ``<Class>Config`` from the same module.)

Semantics are exactly those of Feast's DuckDB store, which this class extends:

* a feature row is used for an entity row when the join keys are equal (nulls never match) and
  ``feature_ts <= entity_ts`` and, if the view has a TTL, ``feature_ts + ttl >= entity_ts``;
* of those, the newest ``feature_ts`` wins; rows with the same ``feature_ts`` are ranked by the created
  timestamp column (newest first), as Feast's dedup does;
* every entity row comes back exactly once (duplicates included), with nulls where nothing matched;
* columns: the entity frame's columns, then each view's features in the order Feast asks for them
  (``view__feature`` with ``full_feature_names``).

Only ``get_historical_features`` with a pandas entity frame takes the ASOF path. A SQL-string entity frame,
a start/end-date retrieval and ``filter_by_created_timestamp=True`` on a view with a created-timestamp
column (an extra inequality an ASOF join cannot express) are answered by the DuckDB store unchanged, as
are materialization (``pull_latest_from_table_or_query``), ``pull_all_from_table_or_query``, writes and
monitoring. Data sources are read by the DuckDB store's own reader, so every source type it supports
(parquet and Delta files, Iceberg, Lance, MLflow) works here too.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import ibis
import numpy as np
import pandas as pd
import pyarrow as pa
from feast.feature_view import FeatureView
from feast.infra.offline_stores import offline_utils
from feast.infra.offline_stores.duckdb import (
    DuckDBOfflineStore,
    DuckDBOfflineStoreConfig,
    _read_data_source,
    _validate_lance_feature_views,
    _write_data_source,
)
from feast.infra.offline_stores.ibis import (
    IbisRetrievalJob,
    _get_entity_df_event_timestamp_range,
    _get_entity_schema,
    _to_utc,
)
from feast.infra.offline_stores.offline_store import RetrievalJob, RetrievalMetadata
from feast.infra.registry.base_registry import BaseRegistry
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import RepoConfig
from ibis.expr import datatypes as dt
from pydantic import StrictStr

log = logging.getLogger(__name__)

STORE_TYPE = "gd_provider.feast_ext.asof_store.AsofDuckDBOfflineStore"
_ROW = "__gd_asof_row"  # input position of each entity row, to return rows in input order


class AsofDuckDBOfflineStoreConfig(DuckDBOfflineStoreConfig):
    """``offline_store`` section of ``feature_store.yaml`` (the DuckDB store's options, plus one)."""

    type: StrictStr = STORE_TYPE
    # Return rows in the order of the entity frame. Feast's stores promise no order (nor does this one by
    # default); on, it costs one reordering of the result in Arrow (~0.3 s per 1M rows x 20 features).
    keep_entity_order: bool = False


class AsofDuckDBOfflineStore(DuckDBOfflineStore):
    """Feast's DuckDB offline store with ASOF-join historical retrieval (see the module docstring)."""

    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: pd.DataFrame | str,
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
        **kwargs: Any,
    ) -> RetrievalJob:
        reason = _native_reason(entity_df, feature_views, filter_by_created_timestamp, kwargs)
        if reason:
            log.info("AsofDuckDBOfflineStore: using DuckDB's range join (%s)", reason)
            return DuckDBOfflineStore.get_historical_features(
                config=config,
                feature_views=feature_views,
                feature_refs=feature_refs,
                entity_df=entity_df,
                registry=registry,
                project=project,
                full_feature_names=full_feature_names,
                filter_by_created_timestamp=filter_by_created_timestamp,
                **kwargs,
            )
        _validate_lance_feature_views(feature_views)
        assert isinstance(entity_df, pd.DataFrame)
        return _historical_features_asof(
            config=config,
            feature_views=feature_views,
            feature_refs=feature_refs,
            entity_df=entity_df,
            registry=registry,
            project=project,
            full_feature_names=full_feature_names,
            keep_entity_order=getattr(config.offline_store, "keep_entity_order", False),
        )


def _native_reason(
    entity_df: Any, feature_views: list, filter_by_created_timestamp: bool, kwargs: dict
) -> str:
    if not isinstance(entity_df, pd.DataFrame):
        return "the entity frame is not a pandas DataFrame"
    if kwargs:
        return f"unsupported options {sorted(kwargs)}"
    if filter_by_created_timestamp and any(
        fv.batch_source is not None and fv.batch_source.created_timestamp_column for fv in feature_views
    ):
        return "filter_by_created_timestamp on a view with a created-timestamp column"
    return ""


def _read_view(
    config: RepoConfig, feature_view: FeatureView, feature_refs: list[str], full_feature_names: bool
) -> tuple[ibis.Table, str, str | None, dict[str, str], list[str], timedelta | None]:
    """The view's table and join parameters, prepared exactly as Feast's ibis ``read_fv`` does."""
    if feature_view.batch_source is None:
        raise ValueError(f"Feature view '{feature_view.name}' has no batch_source and cannot be queried.")
    table = _read_data_source(feature_view.batch_source, str(config.repo_path))
    for old_name, new_name in feature_view.batch_source.field_mapping.items():
        if old_name in table.columns:
            table = table.rename({new_name: old_name})

    timestamp_field = feature_view.batch_source.timestamp_field
    created_column = feature_view.batch_source.created_timestamp_column or None
    utc_columns = [timestamp_field] + ([created_column] if created_column else [])
    table = table.mutate(**{c: table[c].cast(dt.Timestamp(timezone="UTC")) for c in utc_columns})

    prefix = feature_view.projection.name_to_use()
    features = [ref.split(":")[1] for ref in feature_refs if ref.startswith(f"{prefix}:")]
    base_prefix = feature_view.projection.name_alias or feature_view.name
    if full_feature_names:
        table = table.rename({f"{base_prefix}__{f}": f for f in features})
        features = [f"{base_prefix}__{f}" for f in features]
    join_key_map = feature_view.projection.join_key_map or {
        e.name: e.name for e in feature_view.entity_columns
    }
    return table, timestamp_field, created_column, dict(join_key_map), features, feature_view.ttl


def _historical_features_asof(
    *,
    config: RepoConfig,
    feature_views: list[FeatureView],
    feature_refs: list[str],
    entity_df: pd.DataFrame,
    registry: BaseRegistry,
    project: str,
    full_feature_names: bool,
    keep_entity_order: bool,
) -> RetrievalJob:
    entity_schema = _get_entity_schema(entity_df=entity_df)
    event_ts = offline_utils.infer_event_timestamp_from_entity_df(entity_schema=entity_schema)
    timestamp_range = _get_entity_df_event_timestamp_range(entity_df, event_ts)
    entity_df = _to_utc(entity_df, event_ts)
    entity_columns = list(entity_df.columns)

    left_df = entity_df
    keep_entity_order = keep_entity_order and _ROW not in entity_columns
    if keep_entity_order:
        left_df = entity_df.assign(**{_ROW: np.arange(len(entity_df), dtype="int64")})
    left = ibis.memtable(left_df)

    joined = left
    selections: dict[str, Any] = {c: left[c] for c in entity_columns}
    if keep_entity_order:
        selections[_ROW] = left[_ROW]
    for i, feature_view in enumerate(feature_views):
        table, ts_field, created, join_key_map, features, ttl = _read_view(
            config, feature_view, feature_refs, full_feature_names
        )
        ts_col = f"__gd_ts{i}"
        key_cols = {
            f"__gd_k{i}_{j}": (feature_col, entity_col)
            for j, (feature_col, entity_col) in enumerate(join_key_map.items())
        }
        columns: dict[str, Any] = {name: table[feature_col] for name, (feature_col, _) in key_cols.items()}
        columns[ts_col] = table[ts_field]
        if created:
            columns["__gd_created"] = table[created]
        columns.update({f: table[f] for f in features})
        right = table.select(**columns)
        if created:
            # Feast keeps, of the feature rows with the newest event timestamp, the one created last
            window = ibis.window(
                group_by=[*key_cols, ts_col], order_by=[ibis.desc(right["__gd_created"])], following=0
            )
            right = right.mutate(__gd_rn=ibis.row_number().over(window))
            right = right.filter(right["__gd_rn"] == 0).drop("__gd_rn", "__gd_created")
        predicates = [left[entity_col] == right[name] for name, (_, entity_col) in key_cols.items()]
        joined = joined.asof_join(right, on=left[event_ts] >= right[ts_col], predicates=predicates)
        for feature in features:
            value = right[feature]
            if ttl:
                fresh = (right[ts_col] + ibis.literal(ttl)) >= left[event_ts]
                value = fresh.ifelse(value, ibis.null(value.type()))
            selections[feature] = value
    result = joined.select(**selections)

    odfvs = OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry)
    for odfv in [fv for fv in odfvs if fv.mode == "substrait"]:
        result = odfv.transform_ibis(result, full_feature_names)

    return _AsofRetrievalJob(
        result,
        _ROW if keep_entity_order and _ROW in result.columns else None,
        [fv for fv in odfvs if fv.mode != "substrait"],
        full_feature_names,
        metadata=RetrievalMetadata(
            features=feature_refs,
            keys=list(set(entity_df.columns) - {event_ts}),
            min_event_timestamp=timestamp_range[0],
            max_event_timestamp=timestamp_range[1],
        ),
        data_source_writer=_write_data_source,
        staging_location=config.offline_store.staging_location,
        staging_location_endpoint_override=config.offline_store.staging_location_endpoint_override,
        repo_path=str(config.repo_path),
    )


class _AsofRetrievalJob(IbisRetrievalJob):
    """Feast's ibis job; with ``row_column`` the rows come back in entity-frame order (put in order in
    Arrow, cheaper than an ``ORDER BY`` of the whole result in DuckDB) and that column is dropped."""

    def __init__(self, table: ibis.Table, row_column: str | None, *args: Any, **kwargs: Any) -> None:
        self._row_column = row_column
        if row_column is not None:
            self._with_rows = table
            table = table.drop(row_column)  # what persist() / to_remote_storage() write
        super().__init__(table, *args, **kwargs)

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        if self._row_column is None:
            return super()._to_arrow_internal(timeout=timeout)
        table = self._with_rows.to_pyarrow()
        rows = table.column(self._row_column).to_numpy()
        order = np.empty(len(rows), dtype="int64")  # rows is a permutation of 0..n-1: invert it, no sort
        order[rows] = np.arange(len(rows), dtype="int64")
        return table.drop_columns([self._row_column]).take(pa.array(order))

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        return self._to_arrow_internal(timeout=timeout).to_pandas()

    def to_df(self, validation_reference: Any = None, timeout: int | None = None) -> pd.DataFrame:
        """``RetrievalJob.to_df`` without its ``reset_index(drop=True)`` copy of the whole frame (0.4 s per
        1M rows x 20 features here): ``Table.to_pandas()`` already gives a fresh ``RangeIndex``."""
        df = self.to_arrow(validation_reference=validation_reference, timeout=timeout).to_pandas()
        index = df.index
        if not (isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1):
            df = df.reset_index(drop=True)
        return df
