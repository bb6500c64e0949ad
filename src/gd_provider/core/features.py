"""Point-in-time training-set retrieval with Feast (generic: no demo names, no Airflow).

* ``read_label_source`` reads the label/entity rows of a time window from a parquet file or a directory
  of parquet files.
* ``retrieve_training_set`` joins Feast features onto those rows as of each row's event timestamp, keeps
  every entity row exactly once, and writes the result as a dataset with a manifest.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gd_provider.core.data import DatasetManifest, uri_to_path, write_dataset

ROW_ID = "__gd_row_id"
_FEAST_TS = "event_timestamp"


class FeatureRetrievalError(ValueError):
    """Label rows or features could not be read, or the joined result is not what was asked for."""


# --------------------------------------------------------------------------------------------- labels


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _parquet_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(
        f
        for f in path.rglob("*.parquet")
        if f.is_file() and not any(part.startswith((".", "_")) for part in f.relative_to(path).parts)
    )


def _bound(value: datetime, field_type: pa.DataType) -> pa.Scalar:
    if not pa.types.is_timestamp(field_type):
        raise FeatureRetrievalError(f"timestamp column has type {field_type}, not a timestamp")
    utc = _as_utc(value)
    if field_type.tz is None:  # naive column: read as UTC
        utc = utc.replace(tzinfo=None)
    return pa.scalar(utc, type=field_type)


def read_label_source(
    path: str | os.PathLike[str],
    start: datetime | None,
    end: datetime | None,
    timestamp_column: str = "event_timestamp",
) -> pd.DataFrame:
    """Rows of a parquet file (or of every ``*.parquet`` under a directory) with ``start <= ts < end``.

    ``None`` leaves that side open; naive datetimes (and naive timestamp columns) are taken as UTC. Files
    are read in sorted path order, so the result order is deterministic. Files whose columns differ are
    combined with the union of their columns (missing values become null); incompatible types raise.
    The timestamp column is returned tz-aware (UTC).
    """
    src = uri_to_path(os.fspath(path))
    if not src.exists():
        raise FeatureRetrievalError(f"label source {os.fspath(path)} does not exist")
    if start is not None and end is not None and _as_utc(start) >= _as_utc(end):
        raise FeatureRetrievalError(f"empty time window: start {start} is not before end {end}")
    files = _parquet_files(src)
    if not files:
        raise FeatureRetrievalError(f"label source {os.fspath(path)} holds no parquet files")

    tables: list[pa.Table] = []
    first_schema: pa.Schema | None = None
    for f in files:
        try:
            file_schema = pq.read_schema(f)
        except Exception as exc:  # pyarrow raises several types for damaged files
            raise FeatureRetrievalError(f"label file {f} is not readable parquet: {exc}") from exc
        if timestamp_column not in file_schema.names:
            raise FeatureRetrievalError(f"label file {f} has no timestamp column {timestamp_column!r}")
        first_schema = first_schema or file_schema
        ts_type = file_schema.field(timestamp_column).type
        expr = None
        if start is not None:
            expr = pc.field(timestamp_column) >= _bound(start, ts_type)
        if end is not None:
            upper = pc.field(timestamp_column) < _bound(end, ts_type)
            expr = upper if expr is None else expr & upper
        try:
            table = pq.read_table(f, filters=expr) if expr is not None else pq.read_table(f)
        except Exception as exc:
            raise FeatureRetrievalError(f"label file {f} could not be read: {exc}") from exc
        if table.num_rows:
            tables.append(table.replace_schema_metadata(None))
    if not tables:
        assert first_schema is not None
        tables = [first_schema.empty_table().replace_schema_metadata(None)]
    try:
        combined = pa.concat_tables(tables, promote_options="default")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise FeatureRetrievalError(
            f"label files under {os.fspath(path)} have incompatible schemas: {exc}"
        ) from exc
    df = combined.to_pandas()
    ts = df[timestamp_column]
    if isinstance(ts.dtype, pd.DatetimeTZDtype):
        df[timestamp_column] = ts.dt.tz_convert("UTC")
    else:
        df[timestamp_column] = pd.to_datetime(ts).dt.tz_localize("UTC")
    return df


# ------------------------------------------------------------------------------------------- features


def _open_store(store: Any):
    if hasattr(store, "get_historical_features"):
        return store
    from feast import FeatureStore

    repo = Path(os.fspath(store))
    if not (repo / "feature_store.yaml").exists():
        raise FeatureRetrievalError(f"{repo} is not a Feast repo (no feature_store.yaml)")
    return FeatureStore(repo_path=str(repo))


def _view_name(ref_view: str) -> str:
    return ref_view.split("@", 1)[0]  # "view@v2" -> "view"


def _resolve_features(store, feature_service: str | None, features: list[str] | None):
    """(refs, what to pass to Feast, {view name: view}) after checking every name exists."""
    if (feature_service is None) == (features is None):
        raise FeatureRetrievalError("give exactly one of feature_service or features")
    views = {v.name: v for v in store.list_all_feature_views(allow_cache=False)}
    if feature_service is not None:
        from feast.errors import FeatureServiceNotFoundException

        try:
            service = store.get_feature_service(feature_service)
        except FeatureServiceNotFoundException as exc:
            known = sorted(s.name for s in store.list_feature_services())
            raise FeatureRetrievalError(
                f"unknown feature service {feature_service!r} (known: {', '.join(known) or 'none'})"
            ) from exc
        refs = [f"{p.name_to_use()}:{f.name}" for p in service.feature_view_projections for f in p.features]
        missing_views = sorted({p.name for p in service.feature_view_projections} - set(views))
        if missing_views:
            raise FeatureRetrievalError(
                f"feature service {feature_service!r} uses unknown feature views: {', '.join(missing_views)}"
            )
        if not refs:
            raise FeatureRetrievalError(f"feature service {feature_service!r} has no features")
        return refs, service, views

    refs = list(features or [])
    if not refs:
        raise FeatureRetrievalError("features is empty")
    unknown = []
    for ref in refs:
        view_part, sep, feature = ref.partition(":")
        view = views.get(_view_name(view_part))
        if not sep or not feature or view is None or feature not in {f.name for f in view.features}:
            unknown.append(ref)
    if unknown:
        raise FeatureRetrievalError(
            f"unknown feature refs: {', '.join(unknown)} (expected '<feature_view>:<feature>'; "
            f"known views: {', '.join(sorted(views)) or 'none'})"
        )
    if len(set(refs)) != len(refs):
        raise FeatureRetrievalError(f"duplicate feature refs in {refs}")
    return refs, refs, views


def _required_join_keys(view) -> set[str]:
    projection = getattr(view, "projection", None)
    if projection is not None and projection.join_key_map:
        return set(projection.join_key_map.values())
    return {c.name for c in getattr(view, "entity_columns", [])}


def retrieve_training_set(
    store,
    entity_df: pd.DataFrame,
    *,
    out_uri: str,
    feature_service: str | None = None,
    features: list[str] | None = None,
    entity_keys: list[str],
    timestamp_column: str,
    label_column: str | None,
    data_interval: list[str] | None = None,
    sort_by: list[str] | None = None,
    filter_by_created_timestamp: bool = False,
) -> DatasetManifest:
    """Join Feast features point-in-time onto ``entity_df`` and write the result to ``out_uri``.

    ``store`` is a ``feast.FeatureStore`` or the path of a Feast repo. Exactly one of ``feature_service``
    (a name) and ``features`` (``"view:feature"`` refs) selects the features. Every row of ``entity_df``
    comes back exactly once with all of its columns, plus one column per feature (the feature name);
    features without a value at the row's time (no snapshot <= ts within the view's TTL) are null.
    Rows are sorted by ``sort_by`` (default: timestamp, then entity keys; ties keep the input order),
    so the same input gives the same file and sha256.

    ``filter_by_created_timestamp`` (Feast >= 0.67) also drops feature rows whose created timestamp is
    after the entity row's event time (values backfilled later). Off by default, as in Feast: with it on,
    a source whose ``created`` column is its load time yields nulls for every earlier event.
    """
    if not isinstance(entity_df, pd.DataFrame):
        raise FeatureRetrievalError(f"entity_df must be a pandas DataFrame, got {type(entity_df).__name__}")
    if entity_df.empty:
        raise FeatureRetrievalError("entity_df is empty: no rows to retrieve features for")
    entity_keys = list(entity_keys)
    sort_by = list(sort_by) if sort_by else [timestamp_column, *entity_keys]
    needed = [*entity_keys, timestamp_column] + ([label_column] if label_column else []) + sort_by
    missing_cols = sorted({c for c in needed if c not in entity_df.columns} - {""})
    if missing_cols:
        raise FeatureRetrievalError(f"entity_df lacks columns {missing_cols} (has {list(entity_df.columns)})")
    if ROW_ID in entity_df.columns:
        raise FeatureRetrievalError(f"entity_df must not have a column named {ROW_ID!r}")

    fs = _open_store(store)
    refs, feast_features, views = _resolve_features(fs, feature_service, features)

    feature_names = [r.split(":", 1)[1] for r in refs]
    clashes = sorted(set(feature_names) & set(entity_df.columns))
    if clashes:
        raise FeatureRetrievalError(f"feature names clash with entity_df columns: {clashes}")
    if len(set(feature_names)) != len(feature_names):
        raise FeatureRetrievalError(f"two feature views give features of the same name: {refs}")
    for view_name in sorted({_view_name(r.split(":", 1)[0]) for r in refs}):
        lacking = sorted(_required_join_keys(views[view_name]) - set(entity_keys))
        if lacking:
            raise FeatureRetrievalError(
                f"feature view {view_name!r} joins on {lacking}, which are not among entity_keys {entity_keys}"
            )

    try:
        ts = pd.to_datetime(entity_df[timestamp_column], utc=True)
    except (ValueError, TypeError) as exc:
        raise FeatureRetrievalError(
            f"timestamp column {timestamp_column!r} is not datetime-like: {exc}"
        ) from exc
    if ts.isna().any():
        raise FeatureRetrievalError(f"{int(ts.isna().sum())} entity rows have a null {timestamp_column!r}")

    left = entity_df.reset_index(drop=True)
    left[ROW_ID] = pd.RangeIndex(len(left), dtype="int64").to_numpy()
    feast_df = left[entity_keys + [ROW_ID]].copy()
    feast_df[_FEAST_TS] = ts.reset_index(drop=True)  # the one datetime column, named as Feast expects

    try:
        result = fs.get_historical_features(
            entity_df=feast_df,
            features=feast_features,
            filter_by_created_timestamp=filter_by_created_timestamp,
        ).to_df()
    except FeatureRetrievalError:
        raise
    except Exception as exc:  # Feast, ibis and duckdb raise many types; keep the cause chained
        raise FeatureRetrievalError(
            f"Feast historical retrieval failed: {type(exc).__name__}: {exc}"
        ) from exc

    if len(result) != len(left):
        raise FeatureRetrievalError(f"Feast returned {len(result)} rows for {len(left)} entity rows")
    if ROW_ID not in result.columns:
        raise FeatureRetrievalError(f"Feast result lost the row id column {ROW_ID!r}")
    got_ids = result[ROW_ID].to_numpy()
    if pd.Series(got_ids).duplicated().any() or set(got_ids.tolist()) != set(range(len(left))):
        raise FeatureRetrievalError("Feast result rows do not map one-to-one onto the entity rows")
    missing_features = [c for c in feature_names if c not in result.columns]
    if missing_features:
        raise FeatureRetrievalError(f"Feast result lacks feature columns {missing_features}")

    right = result[[ROW_ID, *entity_keys, *feature_names]].sort_values(ROW_ID, kind="mergesort")
    right = right.reset_index(drop=True)
    for key in entity_keys:  # the same row id must still carry the same entity key
        a, b = left[key], right[key]
        same = (a.to_numpy() == b.to_numpy()) | (a.isna().to_numpy() & b.isna().to_numpy())
        if not same.all():
            raise FeatureRetrievalError(f"Feast result misaligned on entity key {key!r}")
    joined = left.merge(right.drop(columns=entity_keys), on=ROW_ID, how="left", validate="one_to_one")
    if len(joined) != len(entity_df):
        raise FeatureRetrievalError(f"joined {len(joined)} rows for {len(entity_df)} entity rows")
    # ties in sort_by keep the input order
    joined = joined.sort_values([*sort_by, ROW_ID], kind="mergesort").drop(columns=[ROW_ID])

    return write_dataset(
        joined,
        out_uri,
        sort_by=sort_by,
        entity_keys=entity_keys,
        timestamp_column=timestamp_column,
        label_column=label_column,
        feature_refs=refs,
        data_interval=list(data_interval) if data_interval is not None else None,
    )
