"""Feast for training and serving (generic: no demo names, no Airflow).

* ``resolve_label_source`` says where a label source is (a relative path under the project home, an
  absolute path or a ``file://`` URI anywhere; other URI schemes are refused, saying why);
  ``read_label_source`` reads the label/entity rows of a time window from a parquet file or a directory
  of parquet files; ``entity_frame_from_sql`` (DuckDB) and ``entity_frame_from_callable`` are the other
  entity sources, ``check_entity_window`` refuses their rows outside the window, and
  ``label_source_window_stats`` says how many rows of a label source fell outside it.
* ``retrieve_training_set`` joins Feast features onto those rows as of each row's event timestamp, keeps
  every entity row exactly once, and writes the result as a dataset with a manifest.
* ``materialize_feature_views`` loads views into the online store for an interval (or incrementally);
  ``check_freshness`` / ``FreshnessReport`` say whether views are materialized through a time.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gd_provider.core.data import (
    DEFAULT_PARTITION_ROWS,
    DatasetError,
    DatasetManifest,
    check_partition_rows,
    write_dataset,
)

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


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def _label_path(source: str | os.PathLike[str]) -> Path:
    """A label source as a local path: a path (``~`` expanded) or a ``file:`` URI; other schemes raise."""
    raw = os.fspath(source)
    match = _SCHEME.match(raw)
    scheme = "file" if raw.lower().startswith("file:") else (match.group(1).lower() if match else "")
    if scheme == "file":
        parsed = urlparse(raw)
        if parsed.netloc not in ("", "localhost"):
            raise FeatureRetrievalError(
                f"label source {raw!r}: a file:// URI with a host ({parsed.netloc!r}) is not readable here; "
                "give file:///absolute/path (three slashes) or the path itself"
            )
        return Path(unquote(parsed.path))
    if scheme:
        raise FeatureRetrievalError(
            f"label source {raw!r}: {scheme}:// URIs are not supported: a label source is a parquet file or a "
            "folder of parquet files on a filesystem the Airflow worker mounts, given as a path (relative to "
            "the project home, or absolute) or a file:// URI. Mount or sync that storage to a path, or read "
            "the rows with entity_sql (DuckDB, e.g. read_parquet('<uri>/*.parquet') with its httpfs "
            "extension) or entity_callable instead of label_source"
        )
    return Path(raw).expanduser()


def resolve_label_source(source: str | os.PathLike[str], home: str | os.PathLike[str]) -> Path:
    """Where the label source ``source`` is, as an absolute local path that exists.

    * A relative path is relative to ``home`` (the project home), so configs stay portable between
      setups; it must stay inside it (``..`` out of it is refused: give an absolute path instead).
    * An absolute path (``/data/sales``, ``~/sales``) or a ``file://`` URI (``file:///data/sales``,
      percent-escapes decoded) is read wherever it is: a label source is only read, never written.
    * Other URI schemes (``s3://``, ``gs://``, ``https://``, ...) are refused with what to do instead.

    Raises :class:`FeatureRetrievalError` naming ``source`` and, for a relative one, the home it was
    resolved against, when it is refused or does not exist.
    """
    raw = os.fspath(source)
    if not raw.strip():
        raise FeatureRetrievalError("label source is empty: give a path or a file:// URI")
    path = _label_path(raw)
    if path.is_absolute():
        resolved, how = path.resolve(), ""
    else:
        base = Path(home).expanduser().resolve()
        resolved = (base / path).resolve()
        how = f" (relative: resolved against the project home {base})"
        if resolved != base and base not in resolved.parents:
            raise FeatureRetrievalError(
                f"label source {raw!r} resolves to {resolved}, outside the project home {base}: a relative "
                "label source stays inside the project home; give an absolute path (or a file:// URI) to "
                "read labels elsewhere"
            )
    if not resolved.exists():
        raise FeatureRetrievalError(f"label source {raw!r}{how}: {resolved} does not exist")
    return resolved


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
    The timestamp column is returned tz-aware (UTC). ``path`` may be a ``file://`` URI; a relative path is
    relative to the working directory here (the operator resolves it first: :func:`resolve_label_source`).
    """
    src = _label_path(path)
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
    partition_rows: int | None = DEFAULT_PARTITION_ROWS,
) -> DatasetManifest:
    """Join Feast features point-in-time onto ``entity_df`` and write the result to ``out_uri``.

    ``store`` is a ``feast.FeatureStore`` or the path of a Feast repo. Exactly one of ``feature_service``
    (a name) and ``features`` (``"view:feature"`` refs) selects the features. Every row of ``entity_df``
    comes back exactly once with all of its columns, plus one column per feature (the feature name);
    features without a value at the row's time (no snapshot <= ts within the view's TTL) are null.
    Rows are sorted by ``sort_by`` (default: timestamp, then entity keys; ties keep the input order),
    so the same input gives the same file and sha256. More than ``partition_rows`` rows are written as a
    directory of part files at ``out_uri`` (``core.data``: deterministic names, digest over the parts);
    ``None`` always writes one file.

    ``filter_by_created_timestamp`` (Feast >= 0.67) also drops feature rows whose created timestamp is
    after the entity row's event time (values backfilled later). Off by default, as in Feast: with it on,
    a source whose ``created`` column is its load time yields nulls for every earlier event.
    """
    if not isinstance(entity_df, pd.DataFrame):
        raise FeatureRetrievalError(f"entity_df must be a pandas DataFrame, got {type(entity_df).__name__}")
    if entity_df.empty:
        raise FeatureRetrievalError("entity_df is empty: no rows to retrieve features for")
    try:
        check_partition_rows(partition_rows)
    except DatasetError as exc:
        raise FeatureRetrievalError(str(exc)) from exc
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
        partition_rows=partition_rows,
    )


# ------------------------------------------------------------------------------------ materialization


class FeatureMaterializationError(ValueError):
    """Feature views could not be resolved or materialized."""


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else _as_utc(value)


def resolve_feature_views(
    store: Any, feature_views: list[str] | None = None, feature_service: str | None = None
) -> list[str]:
    """Names of the views to act on: ``feature_views`` as given (each must exist), else the views of
    ``feature_service``, else every feature view of the repo (sorted)."""
    fs = _open_store(store)
    known = {v.name for v in fs.list_feature_views(allow_cache=False)}
    if feature_views:
        names = list(dict.fromkeys(feature_views))
        unknown = [n for n in names if n not in known]
        if unknown:
            raise FeatureMaterializationError(
                f"unknown feature views: {', '.join(unknown)} (known: {', '.join(sorted(known)) or 'none'})"
            )
        return names
    if feature_service:
        from feast.errors import FeatureServiceNotFoundException

        try:
            service = fs.get_feature_service(feature_service, allow_cache=False)
        except FeatureServiceNotFoundException as exc:
            raise FeatureMaterializationError(f"unknown feature service {feature_service!r}") from exc
        names = list(dict.fromkeys(p.name for p in service.feature_view_projections))
        return [n for n in names if n in known]  # on-demand views are not materialized
    if not known:
        raise FeatureMaterializationError("the Feast repo has no feature views")
    return sorted(known)


def _latest_rows(fs: Any, view: Any, start: datetime, end: datetime) -> int | None:
    """Entity keys with a row in ``[start, end]``: what materialization writes (None if not countable)."""
    try:
        from feast.infra.offline_stores.offline_utils import get_offline_store_from_config
        from feast.utils import _get_column_names

        entities = [fs.get_entity(name) for name in view.entities]
        join_keys, features, ts_field, created = _get_column_names(view, entities)
        job = get_offline_store_from_config(fs.config.offline_store).pull_latest_from_table_or_query(
            config=fs.config,
            data_source=view.batch_source,
            join_key_columns=join_keys,
            feature_name_columns=features,
            timestamp_field=ts_field,
            created_timestamp_column=created,
            start_date=start,
            end_date=end,
        )
        table = getattr(job, "table", None)
        if table is not None and hasattr(table, "count"):
            return int(table.count().execute())
        return int(job.to_arrow().num_rows)
    except Exception:  # counting is a courtesy: never fail a materialization over it
        return None


def materialize_feature_views(
    store: Any,
    *,
    start: datetime | None,
    end: datetime,
    feature_views: list[str] | None = None,
    feature_service: str | None = None,
    incremental: bool = False,
    count_rows: bool = True,
) -> dict[str, Any]:
    """Materialize feature views into the online store and describe what was done.

    With ``incremental=False`` every view is materialized over ``start .. end`` (Feast reads
    ``start <= event_ts <= end``: a row stamped exactly at ``end`` is written now and again, unchanged,
    by the next interval). With ``incremental=True`` each view starts where its latest materialization
    ended (Feast's ``materialize_incremental`` rule); a view never materialized starts at ``start``, or
    at ``end - ttl`` when ``start`` is None (Feast itself would use the wall clock, ``now - ttl``, which
    makes backfills depend on when they run). A view already materialized through ``end`` is skipped.

    Returns a JSON-ready manifest ``{project, views: [{name, interval: [start, end] | None, rows,
    skipped, materialized_through}], interval, incremental}`` where ``rows`` is the number of entity keys written per view (``None`` when
    it cannot be counted or ``count_rows`` is off).
    """
    fs = _open_store(store)
    end_utc = _as_utc(end)
    start_utc = _utc(start)
    if not incremental:
        if start_utc is None:
            raise FeatureMaterializationError("start is required unless incremental=True")
        if start_utc > end_utc:
            raise FeatureMaterializationError(f"empty interval: start {start_utc} is after end {end_utc}")
    names = resolve_feature_views(fs, feature_views, feature_service)
    if not names:
        raise FeatureMaterializationError("no feature views to materialize")

    plan: list[tuple[str, datetime]] = []
    for name in names:
        view_start = start_utc
        if incremental:
            view = fs.get_feature_view(name, allow_registry_cache=False)
            previous = _utc(view.most_recent_end_time)
            if previous is not None:
                view_start = previous
            elif view_start is None or view_start >= end_utc:
                # Never materialized and no usable start (none given, or an empty interval as with
                # trigger timetables, where data_interval_start == data_interval_end): load one TTL
                # window, the most the online store could serve anyway.
                if not view.ttl:
                    raise FeatureMaterializationError(
                        f"feature view {name!r} was never materialized and has no TTL: give a start"
                    )
                view_start = end_utc - view.ttl
        assert view_start is not None
        plan.append((name, view_start))

    def run(view_names: list[str], lo: datetime) -> None:
        try:
            fs.materialize(start_date=lo, end_date=end_utc, feature_views=view_names)
        except Exception as exc:
            raise FeatureMaterializationError(
                f"Feast materialization of {', '.join(view_names)} over [{lo.isoformat()}, "
                f"{end_utc.isoformat()}] failed: {type(exc).__name__}: {exc}"
            ) from exc

    if not incremental:
        assert start_utc is not None  # not incremental: a start was given
        run(names, start_utc)  # one call for all views, as Feast would
    else:
        for name, lo in plan:
            if lo < end_utc:
                run([name], lo)

    fs.refresh_registry()
    views = []
    for name, lo in plan:
        skipped = incremental and lo >= end_utc
        rows: int | None = 0 if skipped else None
        if count_rows and not skipped:
            rows = _latest_rows(fs, fs.get_feature_view(name, allow_registry_cache=False), lo, end_utc)
        views.append(
            {
                "name": name,
                # a skipped view was already materialized through ``lo`` (>= end): nothing was read
                "interval": None if skipped else [lo.isoformat(), end_utc.isoformat()],
                "rows": rows,
                "skipped": skipped,
                "materialized_through": (lo if skipped else end_utc).isoformat(),
            }
        )
    return {
        "project": fs.project,
        "views": views,
        "interval": [start_utc.isoformat() if start_utc else None, end_utc.isoformat()],
        "incremental": incremental,
    }


# ------------------------------------------------------------------------------------------ freshness


def feature_view_watermarks(store: Any, feature_views: list[str]) -> dict[str, datetime | None]:
    """Per view, the end of its most recent materialization (UTC) or None; read fresh from the registry."""
    fs = _open_store(store)
    fs.refresh_registry()
    marks: dict[str, datetime | None] = {}
    for name in feature_views:
        from feast.errors import FeatureViewNotFoundException

        try:
            view = fs.get_feature_view(name, allow_registry_cache=False)
        except FeatureViewNotFoundException as exc:
            raise FeatureMaterializationError(f"unknown feature view {name!r}") from exc
        marks[name] = _utc(view.most_recent_end_time)
    return marks


@dataclass(frozen=True)
class FreshnessReport:
    through: datetime
    watermarks: dict[str, datetime | None]

    @property
    def stale(self) -> list[str]:
        return [n for n, mark in self.watermarks.items() if mark is None or mark < self.through]

    @property
    def fresh(self) -> bool:
        return not self.stale

    def message(self) -> str:
        if self.fresh:
            return f"all {len(self.watermarks)} feature views are materialized through {self.through.isoformat()}"
        parts = [
            f"{n} (materialized through {mark.isoformat()})" if (mark := self.watermarks[n]) is not None
            else f"{n} (never materialized)"
            for n in self.stale
        ]
        return (
            f"{len(parts)} of {len(self.watermarks)} feature views not materialized through "
            f"{self.through.isoformat()}: {', '.join(parts)}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "through": self.through.isoformat(),
            "fresh": self.fresh,
            "stale": self.stale,
            "watermarks": {n: (m.isoformat() if m else None) for n, m in self.watermarks.items()},
        }


def check_freshness(
    store: Any,
    through: datetime,
    *,
    feature_views: list[str] | None = None,
    feature_service: str | None = None,
) -> FreshnessReport:
    """Are the views (given, of the service, or all) materialized through ``through``? Reads the registry
    afresh each call: a view is fresh when its latest materialization ended at or after ``through``."""
    fs = _open_store(store)
    names = resolve_feature_views(fs, feature_views, feature_service)
    return FreshnessReport(through=_as_utc(through), watermarks=feature_view_watermarks(fs, names))


# ------------------------------------------------------------------------------ other entity sources


def _utc_column(df: pd.DataFrame, column: str, where: str) -> pd.DataFrame:
    if column not in df.columns:
        raise FeatureRetrievalError(f"{where} has no timestamp column {column!r} (has {list(df.columns)})")
    ts = df[column]
    try:
        if isinstance(ts.dtype, pd.DatetimeTZDtype):
            ts = ts.dt.tz_convert("UTC")
        elif pd.api.types.is_datetime64_any_dtype(ts.dtype):
            ts = ts.dt.tz_localize("UTC")  # naive: read as UTC
        else:
            ts = pd.to_datetime(ts, utc=True)
    except (ValueError, TypeError) as exc:
        raise FeatureRetrievalError(f"{where}: column {column!r} is not datetime-like: {exc}") from exc
    df = df.copy()
    df[column] = ts
    return df


def entity_frame_from_sql(
    sql: str, start: datetime | None, end: datetime | None, timestamp_column: str = "event_timestamp"
) -> pd.DataFrame:
    """Run ``sql`` in an in-memory DuckDB (it can read parquet/CSV files: ``read_parquet('…')``).

    ``$start`` and ``$end`` in the query are bound to the window bounds when it uses them, as naive UTC
    timestamps (the session time zone is UTC), so they compare with naive and tz-aware columns alike.
    The timestamp column is returned tz-aware (UTC); naive values are taken as UTC.
    """
    import duckdb

    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        try:
            statements = con.extract_statements(sql)
        except duckdb.Error as exc:
            raise FeatureRetrievalError(f"entity_sql does not parse: {exc}") from exc
        if len(statements) != 1:
            raise FeatureRetrievalError(f"entity_sql must be exactly one statement, got {len(statements)}")
        bounds = {
            name: (None if value is None else _as_utc(value).replace(tzinfo=None))
            for name, value in (("start", start), ("end", end))
        }
        wanted = set(statements[0].named_parameters)
        unknown = sorted(wanted - set(bounds))
        if unknown:
            raise FeatureRetrievalError(f"entity_sql uses unknown parameters {unknown} (known: $start, $end)")
        params = {name: bounds[name] for name in wanted}
        try:
            df = con.execute(sql, params).df() if params else con.execute(sql).df()
        except duckdb.Error as exc:
            raise FeatureRetrievalError(f"entity_sql failed: {type(exc).__name__}: {exc}") from exc
    finally:
        con.close()
    return _utc_column(df, timestamp_column, "entity_sql result")


def entity_frame_from_callable(
    fn: Any, start: datetime | None, end: datetime | None, timestamp_column: str = "event_timestamp"
) -> pd.DataFrame:
    """``fn(start, end)`` must return a pandas DataFrame with the timestamp column."""
    try:
        df = fn(_utc(start), _utc(end))
    except FeatureRetrievalError:
        raise
    except Exception as exc:
        name = getattr(fn, "__qualname__", repr(fn))
        raise FeatureRetrievalError(f"entity_callable {name} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(df, pd.DataFrame):
        raise FeatureRetrievalError(
            f"entity_callable must return a pandas DataFrame, got {type(df).__name__}"
        )
    return _utc_column(df, timestamp_column, "entity_callable result")


def check_entity_window(
    df: pd.DataFrame, start: datetime | None, end: datetime | None, timestamp_column: str, source: str
) -> None:
    """Refuse entity rows outside ``[start, end)``: a row after the window end is a label from the future
    of this run (a leak), a row before it does not belong to this run's training set."""
    ts = df[timestamp_column]
    bad = pd.Series(False, index=df.index)
    parts = []
    if end is not None:
        after = ts >= pd.Timestamp(_as_utc(end))
        bad |= after
        if after.any():
            parts.append(f"{int(after.sum())} at or after the window end {_as_utc(end).isoformat()}")
    if start is not None:
        before = ts < pd.Timestamp(_as_utc(start))
        bad |= before
        if before.any():
            parts.append(f"{int(before.sum())} before the window start {_as_utc(start).isoformat()}")
    if bad.any():
        raise FeatureRetrievalError(
            f"{source}: {int(bad.sum())} of {len(df)} entity rows fall outside the window "
            f"({'; '.join(parts)}; their timestamps span {ts[bad].min().isoformat()} .. {ts[bad].max().isoformat()})"
        )


def label_source_window_stats(
    path: str | os.PathLike[str],
    start: datetime | None,
    end: datetime | None,
    timestamp_column: str,
    now: datetime | None = None,
) -> dict[str, int]:
    """How many rows of the label source fall before, inside and after ``[start, end)`` (reads only the
    timestamp column). ``read_label_source`` keeps only the inside; this says what it left out.

    With ``now`` (the moment of retrieval), ``rows_in_future`` counts the rows stamped after it: labels
    that cannot exist yet (a producer's clock or time zone is wrong), which validation judges. Rows after
    the window end but not after ``now`` are later data (e.g. a rerun of an older night) and only counted.
    """
    src = _label_path(path)
    counts = {
        "rows_total": 0,
        "rows_before_window": 0,
        "rows_in_window": 0,
        "rows_after_window": 0,
        "rows_null_timestamp": 0,
        "rows_in_future": 0,
    }
    for f in _parquet_files(src):
        try:
            table = pq.read_table(f, columns=[timestamp_column])
        except Exception as exc:
            raise FeatureRetrievalError(f"label file {f} is not readable parquet: {exc}") from exc
        col = table.column(timestamp_column)
        counts["rows_total"] += table.num_rows
        counts["rows_null_timestamp"] += col.null_count
        ts_type = col.type
        if end is not None:
            counts["rows_after_window"] += int(
                pc.sum(pc.greater_equal(col, _bound(end, ts_type))).as_py() or 0
            )
        if start is not None:
            counts["rows_before_window"] += int(pc.sum(pc.less(col, _bound(start, ts_type))).as_py() or 0)
        if now is not None:
            counts["rows_in_future"] += int(pc.sum(pc.greater(col, _bound(now, ts_type))).as_py() or 0)
    counts["rows_in_window"] = (
        counts["rows_total"]
        - counts["rows_before_window"]
        - counts["rows_after_window"]
        - counts["rows_null_timestamp"]
    )
    return counts


def rows_in_future(df: pd.DataFrame, timestamp_column: str, now: datetime) -> int:
    """How many rows of ``df`` are stamped after ``now`` (the moment of retrieval)."""
    ts = pd.to_datetime(df[timestamp_column], utc=True, errors="coerce")
    return int((ts > pd.Timestamp(_as_utc(now))).sum())


def _timestamp_max(f: Path, column: str) -> Any:
    """The largest ``column`` value of a parquet file from its row-group statistics (None: unknown)."""
    meta = pq.ParquetFile(f).metadata
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    if column not in names:
        return None
    idx = names.index(column)
    best = None
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(idx).statistics
        if stats is None or not stats.has_min_max:
            return None
        best = stats.max if best is None else max(best, stats.max)
    return best


def feature_source_stats(
    store: Any, now: datetime, *, feature_service: str | None = None, features: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Per feature view of ``feature_service`` / ``features``: how many rows of its batch source are
    stamped after ``now`` (the moment of retrieval). A point-in-time join never picks them (no entity row
    is that late), so without this count they would vanish without a word; validation judges them.

    ``{view: {"source", "rows_total", "rows_in_future", "latest"}}``; a source that is not a local
    parquet file or folder gets ``{"source", "counted": False, "why"}`` instead (never a silent zero).
    Reads only the timestamp column, and only from files whose statistics say they reach past ``now``.
    """
    fs = _open_store(store)
    refs, _, views = _resolve_features(fs, feature_service, features)
    bound = pd.Timestamp(_as_utc(now))
    out: dict[str, dict[str, Any]] = {}
    for name in sorted({_view_name(r.split(":", 1)[0]) for r in refs}):
        source = views[name].batch_source
        path = getattr(source, "path", None)
        column = getattr(source, "timestamp_field", None)
        if not path or not column or "://" in str(path):
            out[name] = {"source": str(path or type(source).__name__), "counted": False,
                         "why": "not a local parquet file source: its future rows are not counted"}
            continue
        local = Path(path)
        if not local.is_absolute():
            local = Path(fs.repo_path) / local
        files = _parquet_files(local) if local.exists() else []
        if not files:
            out[name] = {"source": str(local), "counted": False, "why": "no parquet files found"}
            continue
        total, future, latest = 0, 0, None
        for f in files:
            meta = pq.ParquetFile(f).metadata
            total += meta.num_rows
            top = _timestamp_max(f, column)
            top_ts = pd.Timestamp(top) if top is not None else None
            if top_ts is not None and top_ts.tzinfo is None:
                top_ts = top_ts.tz_localize("UTC")
            if top_ts is not None and top_ts <= bound:
                latest = top_ts if latest is None else max(latest, top_ts)
                continue
            col = pd.to_datetime(pq.read_table(f, columns=[column]).column(column).to_pandas(), utc=True)
            future += int((col > bound).sum())
            if len(col):
                latest = col.max() if latest is None else max(latest, col.max())
        out[name] = {"source": str(local), "rows_total": total, "rows_in_future": future,
                     "latest": latest.isoformat() if latest is not None else None, "counted": True}
    return out

