"""Shared connection lookup: a missing *default* connection means "use the embedded default"."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook, Connection
from airflow.sdk.exceptions import AirflowNotFoundException


class GdBaseHook(BaseHook):
    """Base for our hooks.

    The embedded default needs no connection at all: when the hook's *default* connection id
    (``<svc>_default``) is not defined, the hook uses the embedded default under the project home.
    A non-default connection id that does not exist is an error, never a silent fallback.
    """

    default_conn_name: str = ""

    def __init__(self, conn_id: str | None = None) -> None:
        super().__init__()
        self.conn_id = conn_id or self.default_conn_name
        self._conn: Connection | None = None
        self._looked_up = False

    def connection(self) -> Connection | None:
        if not self._looked_up:
            try:
                self._conn = self.get_connection(self.conn_id)
            except AirflowNotFoundException:
                if self.conn_id != self.default_conn_name:
                    raise
                self.log.info("Connection %r is not defined: using the embedded default", self.conn_id)
                self._conn = None
            self._looked_up = True
        return self._conn

    def extra(self) -> dict[str, Any]:
        conn = self.connection()
        return dict(conn.extra_dejson) if conn is not None else {}
