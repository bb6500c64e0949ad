"""Feast operators: point-in-time retrieval of a training set, and materialization into the online store."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import Asset, AssetAlias, BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from gd_provider import settings
from gd_provider.operators._common import (
    data_window_end,
    run_interval,
    task_dir,
)

DEFAULT_MATERIALIZED_ALIAS = "feast_materialized_views"
DEFAULT_PARTITION_ROWS = 1_000_000  # = gd_provider.core.data.DEFAULT_PARTITION_ROWS (not imported at parse time)


def feature_view_asset(project: str, view: str) -> Asset:
    """The Airflow Asset of a Feast feature view's online data: ``feast://<project>/<view>``."""
    return Asset(f"feast://{project}/{view}")


def training_set_asset(dag_id: str, task_id: str) -> Asset:
    """The default Asset of the training set a retrieval task writes: ``gd-dataset://<dag_id>/<task_id>``."""
    return Asset(f"gd-dataset://{dag_id}/{task_id}")


def _emit(context: Any, outlets: Sequence[Any], asset: Asset, extra: dict[str, Any], log: Any) -> bool:
    """Attach ``extra`` to the asset event of ``asset``: directly when it is a declared outlet, else
    through the first declared AssetAlias. False when neither is declared (no event)."""
    events = context.get("outlet_events") if hasattr(context, "get") else None
    if events is None:
        return False
    if any(isinstance(o, Asset) and o.uri == asset.uri for o in outlets):
        events[asset].extra = extra
        return True
    alias = next((o for o in outlets if isinstance(o, AssetAlias)), None)
    if alias is not None:
        events[alias].add(asset, extra=extra)
        return True
    log.warning("Asset %s is not among the task's outlets: no asset event for it", asset.uri)
    return False


class FeastHistoricalFeaturesOperator(BaseOperator):
    """Build the training set for this DAG run: entity/label rows whose timestamp falls in
    ``[end - lookback, end)``, joined point-in-time correctly with the features of ``feature_service``
    (or ``features`` refs). ``end`` is the run's data window end (``_common.data_window_end``, shared
    with FeatureFreshnessSensor and validation): ``as_of`` (templated; default: the Param ``as_of``),
    else a scheduled run's ``data_interval_end``, else for a manual run of a cron DAG the last schedule
    tick at or before its logical date, else for an asset-triggered run the materialized-through
    instant of its triggering events. Writes ``<run folder>/<task_id>/training_set.parquet``
    and returns the dataset manifest (uri, sha256, rows, columns, ...) — never the data. With more than
    ``partition_rows`` rows (default 1,000,000; ``None``: never) that URI is a directory of parquet part
    files of ``partition_rows`` rows each, recorded in the manifest's ``partitions`` (``core.data``).

    The entity/label rows come from exactly one of:

    * ``label_source``: a parquet file or a folder of parquet files: a path relative to the project home
      (it must stay inside it), an absolute path or a ``file://`` URI anywhere the worker can read (other
      URI schemes such as ``s3://`` are refused, saying what to do instead: mount the storage, or use
      ``entity_sql``). Rows outside the window are left out; how many were before and after it is logged
      and returned as ``entity_source_stats``.
    * ``entity_sql``: one SQL query run in an in-memory DuckDB (templated; ``$start`` / ``$end`` are bound
      to the window bounds when used), e.g. ``SELECT * FROM read_parquet('/data/tx/*.parquet') WHERE
      event_timestamp >= $start AND event_timestamp < $end``.
    * ``entity_callable``: ``fn(start, end) -> pandas.DataFrame``.

    Rows that a query or callable returns outside the window fail the task (a row at or after the window
    end is a label from this run's future). Duplicate entity+timestamp rows are kept (validation reports
    them). The task emits an asset event for ``dataset_asset`` (default
    ``gd-dataset://<dag_id>/<task_id>``) with the dataset's uri, sha256, rows and window.

    ``mlflow_run_id`` (templated; e.g. a run an earlier task created): the dataset is also logged to that
    MLflow run (connection ``mlflow_conn_id``) as a dataset input with context ``training`` - metadata
    only (source = the URI, digest, schema, profile), nothing uploaded.
    """

    template_fields: Sequence[str] = (
        "label_source",
        "entity_sql",
        "feature_service",
        "features",
        "as_of",
        "mlflow_run_id",
        "feast_conn_id",
        "mlflow_conn_id",
    )
    template_fields_renderers = {"entity_sql": "sql"}
    ui_color = "#c3e7d7"

    def __init__(
        self,
        *,
        label_source: str | None = None,
        entity_sql: str | None = None,
        entity_callable: Callable[..., Any] | None = None,
        feature_service: str | None = None,
        features: list[str] | None = None,
        entity_keys: Sequence[str],
        timestamp_column: str = "event_timestamp",
        label_column: str,
        sort_by: Sequence[str] | None = None,
        lookback: timedelta = timedelta(days=21),
        feast_conn_id: str = "feast_default",
        dataset_asset: Asset | str | None = None,
        as_of: str | None = None,
        partition_rows: int | None = DEFAULT_PARTITION_ROWS,
        mlflow_run_id: str | None = None,
        mlflow_conn_id: str = "mlflow_default",
        **kwargs: Any,
    ) -> None:
        if partition_rows is not None and (
            isinstance(partition_rows, bool) or not isinstance(partition_rows, int) or partition_rows < 1
        ):
            raise ValueError(f"partition_rows must be a positive integer or None, got {partition_rows!r}")
        given = [
            n
            for n, v in (
                ("label_source", label_source),
                ("entity_sql", entity_sql),
                ("entity_callable", entity_callable),
            )
            if v is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of label_source, entity_sql, entity_callable (got {given or 'none'})"
            )
        if entity_callable is not None and not callable(entity_callable):
            raise TypeError(f"entity_callable must be callable, got {type(entity_callable).__name__}")
        outlets = list(kwargs.pop("outlets", None) or [])
        super().__init__(**kwargs)
        if dataset_asset is None:
            dataset_asset = training_set_asset(self.dag_id, self.task_id)
        elif isinstance(dataset_asset, str):
            dataset_asset = Asset(dataset_asset)
        self.dataset_asset = dataset_asset
        if not any(isinstance(o, Asset) and o.uri == dataset_asset.uri for o in outlets):
            outlets.append(dataset_asset)
        self.outlets = outlets
        self.label_source = label_source
        self.entity_sql = entity_sql
        self.entity_callable = entity_callable
        self.feature_service = feature_service
        self.features = features
        self.entity_keys = list(entity_keys)
        self.timestamp_column = timestamp_column
        self.label_column = label_column
        self.sort_by = list(sort_by) if sort_by else None
        self.lookback = lookback
        self.feast_conn_id = feast_conn_id
        self.as_of = as_of
        self.partition_rows = partition_rows
        self.mlflow_run_id = mlflow_run_id
        self.mlflow_conn_id = mlflow_conn_id

    def _entity_frame(self, start: Any, end: Any, now: Any = None) -> tuple[Any, dict[str, Any]]:
        from gd_provider.core.features import (
            FeatureRetrievalError,
            check_entity_window,
            entity_frame_from_callable,
            entity_frame_from_sql,
            label_source_window_stats,
            read_label_source,
            resolve_label_source,
            rows_in_future,
        )

        ts = self.timestamp_column
        now = now or datetime.now(UTC)
        if self.label_source is not None:
            source = resolve_label_source(str(self.label_source), settings.project_home())
            entity_df = read_label_source(str(source), start, end, timestamp_column=ts)
            stats = label_source_window_stats(str(source), start, end, ts, now=now)
            self.log.info(
                "Label source %s: %d rows in [%s, %s); left out %d before, %d after the window (%d of them "
                "stamped after now, %s), %d without a timestamp",
                source,
                len(entity_df),
                start,
                end,
                stats["rows_before_window"],
                stats["rows_after_window"],
                stats["rows_in_future"],
                now.isoformat(),
                stats["rows_null_timestamp"],
            )
            where = f"label source {source}"
        elif self.entity_sql is not None:
            entity_df = entity_frame_from_sql(self.entity_sql, start, end, timestamp_column=ts)
            check_entity_window(entity_df, start, end, ts, "entity_sql")
            stats = {"rows_total": len(entity_df), "rows_in_future": rows_in_future(entity_df, ts, now)}
            where = "entity_sql"
        else:
            entity_df = entity_frame_from_callable(self.entity_callable, start, end, timestamp_column=ts)
            check_entity_window(entity_df, start, end, ts, "entity_callable")
            stats = {"rows_total": len(entity_df), "rows_in_future": rows_in_future(entity_df, ts, now)}
            where = "entity_callable"
        if entity_df.empty:
            raise FeatureRetrievalError(
                f"empty window: {where} has no entity rows in [{start.isoformat()}, {end.isoformat()})"
            )
        return entity_df, stats

    def execute(self, context: Any) -> dict[str, Any]:
        from gd_provider.core.features import (
            FeatureRetrievalError,
            feature_source_stats,
            retrieve_training_set,
        )
        from gd_provider.hooks.feast import FeastHook

        # the same end as the freshness sensor and validation: as_of, else the run's schedule slot
        end = data_window_end(context, as_of=self.as_of, log=self.log).end
        start = end - self.lookback
        now = datetime.now(UTC)
        store = FeastHook(self.feast_conn_id).get_conn()
        try:
            entity_df, stats = self._entity_frame(start, end, now=now)
            feature_stats = feature_source_stats(store, now, feature_service=self.feature_service,
                                                 features=self.features)
            manifest = retrieve_training_set(
                store,
                entity_df,
                out_uri=str(task_dir(context, self.task_id) / "training_set.parquet"),
                feature_service=self.feature_service,
                features=self.features,
                entity_keys=self.entity_keys,
                timestamp_column=self.timestamp_column,
                label_column=self.label_column,
                data_interval=[start.isoformat(), end.isoformat()],
                sort_by=self.sort_by or [self.timestamp_column, *self.entity_keys],
                partition_rows=self.partition_rows,
            )
        except FeatureRetrievalError as exc:
            raise AirflowFailException(f"feature retrieval failed: {exc}") from exc
        layout = f"{manifest.partitions['parts']} parts" if manifest.partitions else "one file"
        self.log.info(
            "Training set %s (%s): %d rows, sha256 %s", manifest.uri, layout, manifest.rows, manifest.sha256
        )
        result = manifest.to_dict()
        result["entity_source_stats"] = stats
        # rows the window or the point-in-time join left out without a trace: validation judges them
        result["retrieved_at"] = now.isoformat()
        result["feature_source_stats"] = feature_stats
        future = {v: st["rows_in_future"] for v, st in feature_stats.items() if st.get("rows_in_future")}
        if future or stats.get("rows_in_future"):
            self.log.warning("Rows stamped after the moment of retrieval (%s): %d entity/label rows; feature "
                             "views %s", now.isoformat(), stats.get("rows_in_future", 0), future or "none")
        if self.feature_service:  # lineage (gd.feature_service) reads it from this manifest
            result["feature_service"] = self.feature_service
        run_id = str(self.mlflow_run_id).strip() if self.mlflow_run_id is not None else ""
        if run_id:
            result["mlflow_input"] = self._log_mlflow_input(run_id, manifest)
        _emit(
            context,
            self.outlets,
            self.dataset_asset,
            {
                "uri": manifest.uri,
                "sha256": manifest.sha256,
                "rows": manifest.rows,
                "data_interval": manifest.data_interval,
                "feature_refs": manifest.feature_refs,
                "parts": manifest.partitions["parts"] if manifest.partitions else 1,
            },
            self.log,
        )
        return result

    def _log_mlflow_input(self, run_id: str, manifest: Any) -> dict[str, Any]:
        from gd_provider.core.tracking import log_dataset_input
        from gd_provider.hooks.mlflow import MlflowHook

        client = MlflowHook(self.mlflow_conn_id).get_config().client()
        try:
            dataset = log_dataset_input(client, run_id, manifest, context="training")
        except Exception as exc:  # MlflowException (unknown run, bad request) or a bad manifest
            raise AirflowFailException(
                f"could not log the training set as a dataset input of MLflow run {run_id!r}: {exc}"
            ) from exc
        self.log.info("Logged as dataset input %s@%s of MLflow run %s", dataset.name, dataset.digest, run_id)
        return {"run_id": run_id, "name": dataset.name, "digest": dataset.digest}


class FeastMaterializeOperator(BaseOperator):
    """Materialize feature views into the online store for this DAG run.

    Views: ``feature_views`` (names), else the views of ``feature_service``, else every view of the repo.
    Interval: the run's data interval (Feast reads ``start <= event_ts <= end``, so a row stamped exactly
    at the end is written now and again, unchanged, by the next run). With ``incremental=True`` each view
    goes from the end of its latest materialization to ``data_interval_end`` (the rule of Feast's
    ``materialize_incremental``); a view never materialized starts at ``data_interval_start`` (Feast
    would take ``now - ttl``, which breaks backfills), and one already materialized through the end is
    skipped. With ``incremental=False`` an empty interval (``data_interval_start == data_interval_end``,
    what Airflow 3's default cron timetable, ``CronTriggerTimetable`` without ``interval=``, gives every
    run) fails the task: Feast would load nothing yet move the view's watermark to the end.

    Returns a manifest ``{project, views: [{name, interval, rows, skipped, materialized_through,
    asset_uri}], interval, incremental}`` (``rows``: entity keys written, ``None`` if not countable) and
    emits an asset event per materialized view on ``feast://<project>/<view>`` with ``{project, view,
    rows, interval, materialized_through}`` as its extra - and none for a skipped view. The events go
    through the AssetAlias ``asset_alias`` (default ``feast_materialized_views``), the task's only
    outlet by default: Airflow registers an event for every Asset declared as an outlet whenever the task
    succeeds, so a declared per-view Asset would announce fresh features after a rerun that materialized
    nothing. (Assets you add to ``outlets`` yourself get that event on every success.) DAGs scheduled on
    ``feast://<project>/<view>`` are triggered by the alias's events like by any other.
    """

    template_fields: Sequence[str] = ("feature_service", "feast_conn_id")
    ui_color = "#b5e0c9"

    def __init__(
        self,
        *,
        feature_views: Sequence[str] | None = None,
        feature_service: str | None = None,
        project: str | None = None,
        incremental: bool = False,
        count_rows: bool = True,
        asset_alias: str | None = None,
        feast_conn_id: str = "feast_default",
        **kwargs: Any,
    ) -> None:
        if feature_views is not None and feature_service is not None:
            raise ValueError("give feature_views or feature_service, not both")
        if isinstance(feature_views, str):
            raise TypeError("feature_views must be a list of names, not a string")
        outlets = list(kwargs.pop("outlets", None) or [])
        self.feature_views = list(feature_views) if feature_views else None
        self.project = project
        # only an alias: events for the views actually materialized (see the class docstring)
        outlets.append(AssetAlias(asset_alias or DEFAULT_MATERIALIZED_ALIAS))
        super().__init__(outlets=outlets, **kwargs)
        self.feature_service = feature_service
        self.incremental = incremental
        self.count_rows = count_rows
        self.asset_alias = asset_alias
        self.feast_conn_id = feast_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from gd_provider.core.features import FeatureMaterializationError, materialize_feature_views
        from gd_provider.hooks.feast import FeastHook

        start, end = run_interval(context)
        if not self.incremental and start is not None and start >= end:
            raise AirflowFailException(
                f"empty materialization interval [{start.isoformat()}, {end.isoformat()}]: "
                "data_interval_start == data_interval_end, as Airflow 3's CronTriggerTimetable gives every "
                "run unless it has an interval=. Feast would load nothing and still mark the views "
                "materialized through the end. Use incremental=True (each view goes on from its own "
                "watermark), or a timetable with a data interval, e.g. CronTriggerTimetable(cron, "
                "timezone='UTC', interval=timedelta(days=1))"
            )
        store = FeastHook(self.feast_conn_id).get_conn()
        if self.project and store.project != self.project:
            raise AirflowFailException(
                f"the Feast repo's project is {store.project!r}, not {self.project!r} (connection "
                f"{self.feast_conn_id!r}): refusing to emit assets for the wrong project"
            )
        try:
            manifest = materialize_feature_views(
                store,
                start=start,
                end=end,
                feature_views=self.feature_views,
                feature_service=self.feature_service,
                incremental=self.incremental,
                count_rows=self.count_rows,
            )
        except FeatureMaterializationError as exc:
            raise AirflowFailException(f"materialization failed: {exc}") from exc
        project = manifest["project"]
        for view in manifest["views"]:
            asset = feature_view_asset(project, view["name"])
            view["asset_uri"] = asset.uri
            if view["skipped"]:
                self.log.info(
                    "%s: already materialized through %s: no asset event",
                    view["name"],
                    view["materialized_through"],
                )
                if any(isinstance(o, Asset) and o.uri == asset.uri for o in self.outlets):
                    self.log.warning(
                        "%s is a declared outlet: Airflow registers an event for it on success anyway",
                        asset.uri,
                    )
                continue
            extra = {
                "project": project,
                "view": view["name"],
                "rows": view["rows"],
                "interval": view["interval"],
                "materialized_through": view["materialized_through"],
            }
            _emit(context, self.outlets, asset, extra, self.log)
            self.log.info(
                "Materialized %s over %s: %s entity keys", view["name"], view["interval"], view["rows"]
            )
        return manifest
