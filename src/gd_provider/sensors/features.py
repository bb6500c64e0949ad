"""FeatureFreshnessSensor: wait until Feast feature views are materialized through the run's data window end."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException, AirflowSensorTimeout

from gd_provider.operators._common import data_window_end


class FeatureFreshnessSensor(BaseSensorOperator):
    """Succeeds when every feature view (``feature_views``, else those of ``feature_service``, else all)
    has been materialized through the run's data window end: the end of its most recent
    materialization interval in the Feast registry is at or after it. The registry is read afresh on
    each poke. Returns (XCom) ``{through, fresh, stale, watermarks}``.

    The data window end is the one retrieval and validation use (``_common.data_window_end``): ``as_of``
    (templated; default: the run's Param ``as_of``) when set, else a scheduled run's
    ``data_interval_end``, else for a manual run of a cron DAG the last schedule tick at or before its
    logical date (not the wall clock of the trigger), else for an asset-triggered run the
    materialized-through instant in its triggering events. A run none of these fits fails at once.

    ``mode="reschedule"`` by default (the worker slot is freed between pokes). ``deferrable=True`` hands
    the waiting to the triggerer (``FeatureFreshnessTrigger``). On timeout the error names each stale
    view and its watermark. An unknown view name fails the task at once.
    """

    template_fields: Sequence[str] = ("feature_service", "as_of", "feast_conn_id")
    ui_color = "#d9f0e3"

    def __init__(
        self,
        *,
        feature_views: Sequence[str] | None = None,
        feature_service: str | None = None,
        feast_conn_id: str = "feast_default",
        deferrable: bool = False,
        mode: str = "reschedule",
        poke_interval: timedelta | float = 300,
        as_of: str | None = None,
        **kwargs: Any,
    ) -> None:
        if feature_views is not None and feature_service is not None:
            raise ValueError("give feature_views or feature_service, not both")
        if isinstance(feature_views, str):
            raise TypeError("feature_views must be a list of names, not a string")
        super().__init__(mode=mode, poke_interval=poke_interval, **kwargs)
        self.feature_views = list(feature_views) if feature_views else None
        self.feature_service = feature_service
        self.feast_conn_id = feast_conn_id
        self.deferrable = deferrable
        self.as_of = as_of
        self._last_report: Any = None

    def _report(self, context: Any):
        from gd_provider.core.features import FeatureMaterializationError, check_freshness
        from gd_provider.hooks.feast import FeastHook

        end = data_window_end(context, as_of=self.as_of, log=self.log).end
        store = FeastHook(self.feast_conn_id).get_conn()  # a new FeatureStore: nothing cached between pokes
        try:
            report = check_freshness(
                store, end, feature_views=self.feature_views, feature_service=self.feature_service
            )
        except FeatureMaterializationError as exc:
            raise AirflowFailException(f"feature freshness check failed: {exc}") from exc
        self._last_report = report
        return report

    def poke(self, context: Any) -> bool | PokeReturnValue:
        report = self._report(context)
        if report.fresh:
            self.log.info("%s", report.message())
            return PokeReturnValue(is_done=True, xcom_value=report.to_dict())
        self.log.info("Not yet: %s", report.message())
        return False

    def execute(self, context: Any) -> Any:
        if self.deferrable:
            return self._execute_deferrable(context)
        try:
            return super().execute(context)
        except AirflowSensorTimeout as exc:
            if self._last_report is None:
                raise
            raise AirflowSensorTimeout(f"{exc} {self._last_report.message()}") from exc

    def _execute_deferrable(self, context: Any) -> Any:
        from gd_provider.hooks.feast import FeastHook
        from gd_provider.triggers.features import FeatureFreshnessTrigger

        report = self._report(context)
        if report.fresh:  # no need to defer
            self.log.info("%s", report.message())
            return report.to_dict()
        self.log.info("Deferring: %s", report.message())
        timeout_at = datetime.now(UTC) + timedelta(seconds=self.timeout)
        self.defer(
            trigger=FeatureFreshnessTrigger(
                repo_path=str(FeastHook(self.feast_conn_id).repo_path()),
                through=report.through.isoformat(),
                feature_views=self.feature_views or list(report.watermarks),
                poke_interval=self.poke_interval,
                timeout_at=timeout_at.isoformat(),
            ),
            method_name="execute_complete",
            # the trigger reports the timeout itself (with the stale views); this is a backstop
            timeout=timedelta(seconds=self.timeout + max(60.0, 2 * self.poke_interval)),
        )

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        event = event or {}
        status = event.get("status")
        if status == "fresh":
            self.log.info("Feature views fresh: %s", event.get("report"))
            return event.get("report")
        if status == "timeout":
            raise AirflowSensorTimeout(f"Sensor has timed out. {event.get('message', '')}".strip())
        raise AirflowFailException(f"feature freshness check failed: {event.get('message', event)}")
