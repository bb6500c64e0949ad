"""RayJobTrigger: wait in the triggerer until a Ray job (Jobs API) reaches a terminal state."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from airflow.triggers.base import BaseTrigger, TriggerEvent

TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
MAX_CONSECUTIVE_ERRORS = 10  # transient HTTP/connection errors tolerated in a row before giving up
REQUEST_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
ON_KILL_BUDGET_S = 25.0  # all of on_kill: stop request + waiting for the job to end (the triggerer allows 30 s)


class _FatalResponse(Exception):
    """An answer that polling again cannot fix (404, 401, 403)."""


class RayJobTrigger(BaseTrigger):
    """Polls ``GET <dashboard>/api/jobs/<submission_id>`` every ``poll_interval`` seconds (aiohttp; the
    triggerer's event loop never blocks) and fires one event:

    * ``{"status": "terminal", "job_status": "SUCCEEDED" | "FAILED" | "STOPPED", "submission_id", "message",
      "error_type"}`` once the job ends;
    * ``{"status": "timeout", "job_status": <last seen>, ...}`` when ``timeout_at`` (ISO time) passes first
      (the job is left running; the operator's ``execute_complete`` stops it);
    * ``{"status": "error", "message": ...}`` when the job does not exist, the token is refused, or the
      Jobs API stays unreachable for ``MAX_CONSECUTIVE_ERRORS`` polls.

    The address and token come from the Ray connection at run time (the token is never serialized into
    the trigger row). With ``tail_logs`` the job's new log lines go to the task log on every poll.
    ``on_kill`` (Airflow calls it only when a user kills/clears/marks the deferred task - not on triggerer
    restarts or trigger timeouts) writes ``stop_marker`` (a file next to the job's request: the next try of
    a cleared task then never adopts the job it is stopping), stops the Ray job and waits, bounded, until it
    has ended.
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

    # ------------------------------------------------------------------------------------------- helpers
    async def _cluster(self):
        from airflow.sdk import BaseHook

        from gd_provider.hooks.ray import parse_ray_connection

        conn = await BaseHook.aget_connection(self.ray_conn_id)
        extra = await conn.aextra_dejson() if hasattr(conn, "aextra_dejson") else conn.extra_dejson
        config = parse_ray_connection(conn.host, conn.port, conn.schema, conn.password, extra, self.ray_conn_id)
        if config is None:
            raise ValueError(f"Ray connection {self.ray_conn_id!r} is 'local': there is no Ray job to wait for")
        return config

    @staticmethod
    def _ssl(verify: bool | str) -> Any:
        if isinstance(verify, str):
            return ssl.create_default_context(cafile=verify)
        return None if verify else False

    def _url(self, base: str, suffix: str = "") -> str:
        return f"{base.rstrip('/')}/api/jobs/{quote(self.submission_id, safe='')}{suffix}"

    @staticmethod
    async def _check(resp: Any, what: str) -> None:
        if resp.status in (401, 403, 404):
            text = (await resp.text())[:500]
            raise _FatalResponse(f"{what}: HTTP {resp.status}: {text}")
        resp.raise_for_status()

    async def _session(self, config):
        import aiohttp

        headers = await asyncio.to_thread(config.auth_headers)
        return aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            connector=aiohttp.TCPConnector(ssl=self._ssl(config.verify)),
        )

    def _event(self, status: str, job_status: str | None, message: str | None, **more: Any) -> TriggerEvent:
        return TriggerEvent(
            {"status": status, "job_status": job_status, "submission_id": self.submission_id,
             "message": message, **more}
        )

    # ----------------------------------------------------------------------------------------------- run
    async def run(self) -> AsyncIterator[TriggerEvent]:
        import aiohttp

        try:
            config = await self._cluster()
        except Exception as exc:
            yield self._event("error", None, f"cannot resolve Ray connection {self.ray_conn_id!r}: {exc}")
            return
        deadline = datetime.fromisoformat(self.timeout_at) if self.timeout_at else None
        job_url = self._url(config.dashboard_url)
        offset, errors, status = 0, 0, None
        async with await self._session(config) as session:
            while True:
                try:
                    async with session.get(job_url) as resp:
                        await self._check(resp, f"Ray job {self.submission_id}")
                        info = await resp.json()
                    status = str(info.get("status"))
                    if self.tail_logs:
                        offset = await self._tail(session, config, offset, final=status in TERMINAL_STATES)
                    errors = 0
                except _FatalResponse as exc:
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
                    yield self._event(
                        "terminal", status, info.get("message"), error_type=info.get("error_type"),
                        start_time=info.get("start_time"), end_time=info.get("end_time"),
                    )
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

    async def _tail(self, session: Any, config: Any, offset: int, *, final: bool) -> int:
        """Log the job's log lines after ``offset`` (complete lines only unless ``final``)."""
        try:
            async with session.get(self._url(config.dashboard_url, "/logs")) as resp:
                if resp.status != 200:
                    return offset
                logs = (await resp.json()).get("logs") or ""
        except Exception as exc:  # logs are a courtesy; the status poll decides
            self.log.debug("Could not fetch logs of Ray job %s: %s", self.submission_id, exc)
            return offset
        lines, offset = new_log_lines(logs, offset, final=final)
        for line in lines:
            self.log.info("[ray job %s] %s", self.submission_id, line)
        return offset

    # ------------------------------------------------------------------------------------------- killing
    async def on_kill(self) -> None:
        """The user killed the deferred task: stop the Ray job and wait until it has ended (bounded; errors
        are logged, not raised)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ON_KILL_BUDGET_S
        if self.stop_marker:
            try:
                await asyncio.to_thread(write_stop_marker, self.stop_marker, "trigger on_kill")
            except OSError as exc:
                self.log.warning("Could not write the stop marker %s: %s", self.stop_marker, exc)
        if await self.stop_job() is None:
            return
        status = await self.wait_until_ended(max(0.0, deadline - loop.time()))
        self.log.info("Ray job %s after the stop request: %s", self.submission_id, status)

    async def wait_until_ended(self, seconds: float) -> str | None:
        """Poll the job's status until it is terminal or ``seconds`` pass (each request bounded by what is
        left, so the whole wait keeps to ``seconds``); returns the last status seen."""
        import aiohttp

        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        status = None
        try:
            config = await self._cluster()
            async with await self._session(config) as session:
                while True:
                    left = aiohttp.ClientTimeout(total=max(0.5, deadline - loop.time()))
                    async with session.get(self._url(config.dashboard_url), timeout=left) as resp:
                        await self._check(resp, f"Ray job {self.submission_id}")
                        status = str((await resp.json()).get("status"))
                    if status in TERMINAL_STATES or loop.time() >= deadline:
                        return status
                    await asyncio.sleep(min(0.5, max(0.0, deadline - loop.time())))
        except Exception as exc:  # the stop was requested; its landing is a courtesy
            self.log.warning("Could not follow Ray job %s after the stop request: %s", self.submission_id, exc)
            return status

    async def stop_job(self) -> bool | None:
        import aiohttp

        try:
            config = await self._cluster()
            async with await self._session(config) as session, session.post(
                self._url(config.dashboard_url, "/stop"), timeout=aiohttp.ClientTimeout(total=STOP_TIMEOUT_S)
            ) as resp:
                await self._check(resp, f"stopping Ray job {self.submission_id}")
                stopped = bool((await resp.json()).get("stopped"))
        except Exception as exc:
            self.log.warning("Could not stop Ray job %s: %s", self.submission_id, exc)
            return None
        self.log.info("Stop requested for Ray job %s (was running: %s)", self.submission_id, stopped)
        return stopped


def new_log_lines(logs: str, offset: int, *, final: bool) -> tuple[list[str], int]:
    """The lines of a Ray job's whole log text ``logs`` after ``offset`` characters (complete lines only,
    unless ``final``), and the new offset. A log shorter than ``offset`` was rotated or truncated: it is
    read from the start. Shared by the operator's sync tail and the trigger's async one."""
    if len(logs) < offset:
        offset = 0
    chunk = logs[offset:]
    if not final:
        cut = chunk.rfind("\n")
        chunk = chunk[: cut + 1] if cut >= 0 else ""
    return chunk.splitlines(), offset + len(chunk)


def write_stop_marker(path: str | Any, who: str) -> None:
    """Mark a Ray job as being stopped (``RayTrainOperator`` never adopts such a job): the trigger's
    ``on_kill`` and the operator's own stops write the same file."""
    from pathlib import Path

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(f"stop requested by {who} at {datetime.now(UTC).isoformat()}\n")
