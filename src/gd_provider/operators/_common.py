"""Small helpers shared by the operators: where a run's files go, who acted, lineage keys."""

from __future__ import annotations

import logging
import re
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from gd_provider import settings


def safe_name(value: str) -> str:
    # no path separators, and no leading dots: "." / ".." must never become a path component
    return re.sub(r"[^A-Za-z0-9._-]+", "_", value).lstrip("._").rstrip("_") or "run"


def run_key(context: Any) -> str:
    dag_run = context["dag_run"]
    return f"{dag_run.dag_id}/{dag_run.run_id}"


def run_dir(context: Any, *parts: str) -> Path:
    """``<home>/runs/<dag_id>/<run_id>/...``: every output of a DAG run is keyed by that run."""
    dag_run = context["dag_run"]
    path = settings.project_home() / "runs" / safe_name(dag_run.dag_id) / safe_name(dag_run.run_id)
    path = path.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def task_key(context: Any, task_id: str) -> str:
    """``task_id``, plus ``[<map index>]`` for a mapped task instance: unique within a DAG run."""
    ti = context.get("ti") if hasattr(context, "get") else None
    map_index = getattr(ti, "map_index", -1)
    return f"{task_id}[{map_index}]" if isinstance(map_index, int) and map_index >= 0 else task_id


def task_dir(context: Any, task_id: str, *parts: str) -> Path:
    """``<run dir>/<task_id>[.<map index>]/...``: where one task writes its files.

    Keyed by task as well as run, so two retrieval, validation or drift tasks in one DAG (two models, a
    mapped task, a check of raw data and of the training set) never overwrite each other's outputs.
    """
    folder = safe_name(task_key(context, task_id).replace("[", ".").replace("]", ""))
    return run_dir(context, folder, *parts)


class StoragePathError(ValueError):
    """A path from a Param, a config or a DAG argument points outside the configured storage root."""


def resolve_home_path(path: str, *, root: Path | None = None) -> Path:
    """Resolve a data path against the project home (the storage root) and refuse to leave it.

    Relative paths are relative to the root, so DAGs stay portable between setups. ``..`` escapes,
    absolute paths elsewhere and URI schemes are refused with a clear error: paths can come from
    trigger-time Params, and a Param must not make a task read or write outside the storage root.
    """
    raw = str(path)
    if "://" in raw or raw.startswith("file:"):
        raise StoragePathError(f"path {raw!r}: URI schemes are not accepted here; give a path under the storage root")
    base = (root or settings.project_home()).resolve()
    p = Path(raw).expanduser()
    resolved = (p if p.is_absolute() else base / p).resolve()
    if resolved != base and base not in resolved.parents:
        raise StoragePathError(f"path {raw!r} resolves to {resolved}, outside the storage root {base}")
    return resolved


def actor(context: Any) -> str:
    dag_run = context["dag_run"]
    user = getattr(dag_run, "triggering_user_name", None)
    run_type = str(getattr(dag_run, "run_type", ""))
    if "scheduled" in run_type.lower() or not user:
        return "scheduler"
    return user


class DataWindowEnd(NamedTuple):
    """The end of a DAG run's data window, and which rule chose it (logged, and kept for messages)."""

    end: datetime
    rule: str
    detail: str


_SCHEDULED_RUN_TYPES = {"scheduled", "backfill"}


def parse_as_of(value: Any) -> datetime:
    """An ``as_of`` Param/argument (ISO date or date-time, or a datetime) as an aware datetime (naive = UTC)."""
    from datetime import UTC

    from airflow.sdk.exceptions import AirflowFailException

    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(str(value).strip())
        except ValueError as exc:
            raise AirflowFailException(f"as_of {value!r} is not an ISO date/time (e.g. 2026-03-01)") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _run_type(dag_run: Any) -> str:
    value = getattr(dag_run, "run_type", None)
    return str(getattr(value, "value", value) or "").lower()


def _cron_parts(timetable: Any) -> list[tuple[str, Any]]:
    """``(expression, timezone)`` of each cron schedule in a timetable: Task SDK timetables expose them
    as public attributes; a core timetable keeps them private (read defensively). Empty: no cron."""
    if timetable is None:
        return []
    inner = getattr(timetable, "timetable", None)  # AssetOrTimeSchedule: assets OR a time schedule
    if inner is not None and inner is not timetable:
        return _cron_parts(inner)
    several = getattr(timetable, "timetables", None)  # MultipleCronTriggerTimetable
    if isinstance(several, (list, tuple)):
        return [part for t in several for part in _cron_parts(t)]
    expression = getattr(timetable, "expression", None) or getattr(timetable, "_expression", None)
    timezone = getattr(timetable, "timezone", None) or getattr(timetable, "_timezone", None)
    if isinstance(expression, str) and expression and timezone is not None:
        return [(expression, timezone)]
    return []


def last_cron_tick(expression: str, timezone: Any, at: datetime) -> datetime:
    """The latest tick of ``expression`` (in ``timezone``) at or before ``at``, in UTC.

    Computed with croniter on the wall clock of ``timezone``, as Airflow's cron timetables do (their own
    ``_align_to_prev`` is private API of airflow-core, which a Task SDK worker need not have).
    """
    import pendulum
    from croniter import croniter

    zone = pendulum.timezone(timezone) if isinstance(timezone, str) else timezone
    local = pendulum.instance(at).in_timezone(zone).naive()
    prev = croniter(expression, start_time=local).get_prev(datetime)
    following = croniter(expression, start_time=prev).get_next(datetime)
    tick = following if following <= local else prev  # ``at`` itself is a tick
    return pendulum.instance(zone.convert(tick)).in_timezone("UTC")


def _event_end(extra: Any) -> datetime | None:
    """The materialized-through instant in an asset event's extra (FeastMaterializeOperator writes
    ``materialized_through``; older events only ``interval: [start, end]``)."""
    if not isinstance(extra, dict):
        return None
    value = extra.get("materialized_through")
    if value is None and isinstance(extra.get("interval"), (list, tuple)) and len(extra["interval"]) == 2:
        value = extra["interval"][1]
    if not value:
        return None
    try:
        return parse_as_of(value)
    except Exception:
        return None


def _asset_events_end(context: Any) -> tuple[datetime, str] | None:
    """Per triggering asset, the latest materialized-through instant its events carry; the earliest of
    those over the assets (the window must be covered by every view the run waited for)."""
    events = context.get("triggering_asset_events") if hasattr(context, "get") else None
    if not events:
        return None
    latest: dict[str, datetime] = {}
    for key in list(events):
        for event in events[key] or ():
            uri = getattr(getattr(event, "asset", None), "uri", None) or str(key)
            end = _event_end(getattr(event, "extra", None))
            if end is not None and (uri not in latest or end > latest[uri]):
                latest[uri] = end
    if not latest:
        return None
    uri = min(latest, key=lambda u: latest[u])
    detail = ", ".join(f"{u} through {latest[u].isoformat()}" for u in sorted(latest))
    return latest[uri], detail


def is_set(value: Any) -> bool:
    """A templated argument that is set: not None/empty, nor ``None``/``null`` as a template renders a
    missing value."""
    return value is not None and str(value).strip().lower() not in ("", "none", "null")


def data_window_end(context: Any, *, as_of: Any = None, log: Any = None) -> DataWindowEnd:
    """The end of this DAG run's data window: the instant the features must be materialized through
    (FeatureFreshnessSensor), the training set ends at (FeastHistoricalFeaturesOperator), and no event may
    come after (validation). One rule for all of them, in this order:

    1. ``as_of``: the argument, else the run's Param ``as_of`` (ISO date/time; empty = not set);
    2. a scheduled or backfill run: its ``data_interval_end``;
    3. an asset-triggered run: the materialized-through instant in its triggering asset events' extra
       (as FeastMaterializeOperator writes it), the earliest over the assets;
    4. any other run (manual, triggered by an operator) of a cron-scheduled DAG: the latest cron tick at
       or before its logical date (else its ``run_after``). A manual UI run of a cron DAG has the data
       interval ``(now, now)``; waiting for features through "now" would outwait the daily
       materialization by hours;
    5. a manual run of a DAG with neither a cron nor an asset schedule (``schedule=None``, a delta) that
       has a logical date: its data interval end (else the logical date) - the date the user chose.

    Anything else fails at once with what to set (``as_of``), rather than wait for an instant nothing
    will materialize. The chosen rule is logged.
    """
    from airflow.sdk.exceptions import AirflowFailException

    log = log or logging.getLogger(__name__)

    def chosen(end: Any, rule: str, detail: str) -> DataWindowEnd:
        result = DataWindowEnd(parse_as_of(end), rule, detail)
        log.info("Data window end %s (rule %s: %s)", result.end.isoformat(), rule, detail)
        return result

    getter = context.get if hasattr(context, "get") else (lambda key, default=None: default)
    if is_set(as_of):
        return chosen(as_of, "as_of", f"as_of={str(as_of).strip()}")
    params = getter("params") or {}
    param = params.get("as_of") if hasattr(params, "get") else None
    if is_set(param):
        return chosen(param, "as_of", f"Param as_of={str(param).strip()}")

    dag_run = context["dag_run"]
    run_type = _run_type(dag_run)
    interval_end = getattr(dag_run, "data_interval_end", None)
    logical_date = getattr(dag_run, "logical_date", None)
    run_after = getattr(dag_run, "run_after", None)
    if run_type in _SCHEDULED_RUN_TYPES and interval_end is not None:
        return chosen(interval_end, "scheduled", f"{run_type} run: its data_interval_end")
    if run_type == "asset_triggered":
        found = _asset_events_end(context)
        if found is None:
            raise AirflowFailException(
                "asset-triggered run: none of its triggering asset events says through when the features "
                "are materialized (extra 'materialized_through' or 'interval', as FeastMaterializeOperator "
                "writes them); trigger it with the Param as_of to choose the data window end"
            )
        return chosen(found[0], "asset_events", f"asset-triggered run: {found[1]}")

    timetable = getattr(getter("dag"), "timetable", None)
    reference = logical_date or run_after
    crons = _cron_parts(timetable)
    if crons and reference is not None:
        try:
            ticks = [(last_cron_tick(expr, tz, parse_as_of(reference)), expr) for expr, tz in crons]
        except Exception as exc:  # a timetable we could not read: say so rather than guess
            raise AirflowFailException(
                f"{run_type or 'this'} run: could not find the last schedule tick before {reference} "
                f"({type(exc).__name__}: {exc}); trigger it with the Param as_of"
            ) from exc
        tick, expr = max(ticks)
        which = "logical date" if logical_date is not None else "run_after"
        at = parse_as_of(reference).isoformat()
        detail = f"{run_type or 'unscheduled'} run: last tick of {expr!r} at or before its {which} {at}"
        return chosen(tick, "cron_tick", detail)
    if getattr(timetable, "asset_condition", None) is not None:
        raise AirflowFailException(
            f"{run_type or 'this'} run of an asset-scheduled DAG has no materialization to go by (no "
            "triggering asset events): trigger it with the Param as_of (the date the features are "
            "materialized through)"
        )
    if logical_date is not None:
        end = interval_end or logical_date
        which = "data_interval_end" if interval_end else "logical date"
        detail = f"{run_type or 'this'} run of a DAG without a cron schedule: its {which}"
        return chosen(end, "run_interval", detail)
    raise AirflowFailException(
        f"{run_type or 'this'} run has no logical date and its DAG no cron schedule: cannot tell up to when "
        "its data goes. Trigger it with a logical date or the Param as_of"
    )


def interval(context: Any, *, as_of: Any = None, log: Any = None) -> tuple[Any, Any]:
    """``(start, end)`` of this run's data window; ``end`` by :func:`data_window_end`. ``start`` is the
    run's ``data_interval_start`` when ``end`` is the run's own ``data_interval_end``, else ``end``
    (callers take their own lookback from ``end``)."""
    end = data_window_end(context, as_of=as_of, log=log).end
    dag_run = context["dag_run"]
    own_end = getattr(dag_run, "data_interval_end", None)
    own_start = getattr(dag_run, "data_interval_start", None)
    same = own_start is not None and own_end is not None and parse_as_of(own_end) == end
    start = own_start if same else end
    return start, end


def run_interval(context: Any) -> tuple[Any, Any]:
    """The run's own data interval as Airflow gave it (``end``: ``data_interval_end``, else the logical
    date, else ``run_after``): for tasks that act on the run's schedule slot, as materialization does."""
    dag_run = context["dag_run"]
    end = dag_run.data_interval_end or dag_run.logical_date or dag_run.run_after
    start = dag_run.data_interval_start or end
    return start, end


def load_pyfunc(model_uri: str) -> Any:
    """``mlflow.pyfunc.load_model`` without MLflow's pip-requirements check: it compares the model's
    requirements with every installed distribution (~5 s CPU on the first load in a process) only to log
    warnings; our models are trained by this package and record its version in their lineage tags."""
    import mlflow

    return mlflow.pyfunc.load_model(model_uri, suppress_warnings=True)


def push_gate(context: Any, result: Any) -> dict[str, Any]:
    """Push a gate's :class:`~gd_provider.core.gates.result.GateResult` as the XCom ``gate`` (before the task
    fails, when it fails): the run report and the demo read every gate the same way. Returns its dict."""
    data = result.to_dict()
    ti = context.get("ti") if hasattr(context, "get") else None
    if ti is not None:
        ti.xcom_push(key="gate", value=data)
    return data
