"""RayJobTrigger: wait in the triggerer until a Ray job (Jobs API) reaches a terminal state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from gd_provider.hooks.ray import MAX_CONSECUTIVE_ERRORS, TERMINAL_STATES, RayHook, RayJobsApiError

ON_KILL_BUDGET_S = 25.0  # all of on_kill: stop request + waiting for the job to end (the triggerer allows 30 s)


class RayJobTrigger(BaseTrigger):
    """Poll a Ray job through :class:`~gd_provider.hooks.ray.RayHook`'s async methods (the event loop never
    blocks) and fire one event:

    * ``{"status": "terminal", "job_status": "SUCCEEDED" | "FAILED" | "STOPPED", "submission_id", "message",
      "error_type", "start_time", "end_time"}`` once the job ends;
    * ``{"status": "timeout", "job_status": <last seen>, ...}`` when ``timeout_at`` passes first (the job is
      left running; the operator's ``execute_complete`` stops it);
    * ``{"status": "error", "message": ...}`` when the job does not exist, the token is refused, or the Jobs
      API stays unreachable for ``MAX_CONSECUTIVE_ERRORS`` polls.

    ``on_kill`` (Airflow calls it only when a user kills/clears/marks the deferred task) writes the stop
    marker, stops the job and waits, bounded, until it has ended.

    :param submission_id: the Ray job.
    :param ray_conn_id: the Ray connection; address and token are read from it at run time, never serialized.
    :param poll_interval: seconds between status polls.
    :param timeout_at: ISO time after which a ``timeout`` event fires, or None.
    :param tail_logs: copy the job's new log lines into the task log on every poll.
    :param stop_marker: path of the job's stop marker (written by ``on_kill``: a later try never adopts the job).
    """

    def __init__(
        self,
        *,
        submission_id: str,
        ray_conn_id: str = "ray_default",
        poll_interval: float = 10.0,
        timeout_at: str | None = None,
        tail_logs: bool = True,
        stop_marker: str | None = None,
    ) -> None:
        super().__init__()
        self.submission_id = submission_id
        self.ray_conn_id = ray_conn_id
        self.poll_interval = float(poll_interval)
        self.timeout_at = timeout_at
        self.tail_logs = bool(tail_logs)
        self.stop_marker = stop_marker

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "submission_id": self.submission_id,
                "ray_conn_id": self.ray_conn_id,
                "poll_interval": self.poll_interval,
                "timeout_at": self.timeout_at,
                "tail_logs": self.tail_logs,
                "stop_marker": self.stop_marker,
            },
        )

    def _hook(self) -> RayHook:
        return RayHook(self.ray_conn_id)

    def _event(self, status: str, job_status: str | None, message: str | None, **more: Any) -> TriggerEvent:
        return TriggerEvent(
            {"status": status, "job_status": job_status, "submission_id": self.submission_id,
             "message": message, **more}
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        import aiohttp

        hook = self._hook()
        try:
            config = await hook.async_cluster_config()
        except Exception as exc:
            yield self._event("error", None, f"cannot resolve Ray connection {self.ray_conn_id!r}: {exc}")
            return
        deadline = datetime.fromisoformat(self.timeout_at) if self.timeout_at else None
        offset, errors, status = 0, 0, None
        async with hook:
            while True:
                try:
                    info = await hook.async_get_job_info(self.submission_id)
                    status = info.status
                    if self.tail_logs:
                        offset = await hook.async_tail_job_logs(self.submission_id, offset,
                                                                final=status in TERMINAL_STATES)
                    errors = 0
                except RayJobsApiError as exc:
                    yield self._event("error", status, str(exc))
                    return
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    errors += 1
                    if errors >= MAX_CONSECUTIVE_ERRORS:
                        yield self._event(
                            "error", status,
                            f"Ray Jobs API at {config.dashboard_url} failed {errors} times in a row: "
                            f"{type(exc).__name__}: {exc}",
                        )
                        return
                    self.log.warning("Polling Ray job %s failed (%d in a row): %s", self.submission_id, errors, exc)
                    await asyncio.sleep(self.poll_interval)
                    continue
                if status in TERMINAL_STATES:
                    yield self._event("terminal", status, info.message, error_type=info.error_type,
                                      start_time=info.start_time, end_time=info.end_time)
                    return
                now = datetime.now(UTC)
                if deadline is not None and now >= deadline:
                    yield self._event(
                        "timeout", status,
                        f"Ray job {self.submission_id} is still {status} at the deadline {self.timeout_at}",
                    )
                    return
                wait = self.poll_interval
                if deadline is not None:
                    wait = max(0.0, min(wait, (deadline - now).total_seconds()))
                await asyncio.sleep(wait)

    async def on_kill(self) -> None:
        """The user killed the deferred task: stop the Ray job and wait until it has ended (bounded; errors
        are logged, not raised)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ON_KILL_BUDGET_S
        hook = self._hook()
        if await hook.async_stop_job(self.submission_id, stop_marker=self.stop_marker, who="trigger on_kill") is None:
            return
        status = await hook.async_wait_until_ended(self.submission_id, max(0.0, deadline - loop.time()))
        self.log.info("Ray job %s after the stop request: %s", self.submission_id, status)
