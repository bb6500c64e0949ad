"""FeatureFreshnessTrigger: wait in the triggerer until Feast feature views are materialized through a time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class FeatureFreshnessTrigger(BaseTrigger):
    """Polls the Feast registry of ``repo_path`` every ``poke_interval`` seconds (the check runs in a
    thread, so the triggerer's event loop never blocks on the registry) and fires one event:

    * ``{"status": "fresh", "report": {...}}`` once every view is materialized through ``through``;
    * ``{"status": "timeout", "report": {...}, "message": ...}`` when ``timeout_at`` passes first (the
      message names each stale view and its watermark);
    * ``{"status": "error", "message": ...}`` when the check fails (unknown view, unreadable repo).
    """

    def __init__(
        self,
        *,
        repo_path: str,
        through: str,
        feature_views: list[str] | None = None,
        feature_service: str | None = None,
        poke_interval: float = 60.0,
        timeout_at: str | None = None,
    ) -> None:
        super().__init__()
        self.repo_path = repo_path
        self.through = through
        self.feature_views = list(feature_views) if feature_views else None
        self.feature_service = feature_service
        self.poke_interval = float(poke_interval)
        self.timeout_at = timeout_at

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "repo_path": self.repo_path,
                "through": self.through,
                "feature_views": self.feature_views,
                "feature_service": self.feature_service,
                "poke_interval": self.poke_interval,
                "timeout_at": self.timeout_at,
            },
        )

    def _check(self):
        from gd_provider.core.features import check_freshness

        return check_freshness(
            self.repo_path,
            datetime.fromisoformat(self.through),
            feature_views=self.feature_views,
            feature_service=self.feature_service,
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        deadline = datetime.fromisoformat(self.timeout_at) if self.timeout_at else None
        while True:
            try:
                report = await asyncio.to_thread(self._check)
            except Exception as exc:  # report it to the task, which fails with the message
                yield TriggerEvent({"status": "error", "message": f"{type(exc).__name__}: {exc}"})
                return
            if report.fresh:
                yield TriggerEvent({"status": "fresh", "report": report.to_dict()})
                return
            self.log.info("%s", report.message())
            now = datetime.now(UTC)
            if deadline is not None and now >= deadline:
                yield TriggerEvent(
                    {"status": "timeout", "report": report.to_dict(), "message": report.message()}
                )
                return
            wait = self.poke_interval
            if deadline is not None:
                wait = max(0.0, min(wait, (deadline - now).total_seconds()))
            await asyncio.sleep(wait)
