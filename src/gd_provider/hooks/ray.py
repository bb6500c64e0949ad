"""RayHook: where training runs."""

from __future__ import annotations

import re
from typing import Any

from airflow.sdk.exceptions import AirflowException

from gd_provider.hooks._base import GdBaseHook

LOCAL = "local"


class RayHook(GdBaseHook):
    """Connection type ``ray``.

    ``host`` = ``local`` (or no ``ray_default`` connection) starts Ray inside the task with the machine's
    CPUs. A cluster address (``ray://head:10001`` or a Jobs API URL ``http://head:8265``) is recognised
    but not supported yet: it raises instead of silently training locally.
    """

    conn_name_attr = "ray_conn_id"
    default_conn_name = "ray_default"
    conn_type = "ray"
    hook_name = "Ray"

    def __init__(self, ray_conn_id: str = default_conn_name) -> None:
        super().__init__(ray_conn_id)

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema", "login"],
            "relabeling": {"password": "Auth token"},
            "placeholders": {"host": "local | ray://ray-head:10001 | http://ray-head:8265", "port": ""},
        }

    def address(self) -> str:
        conn = self.connection()
        if conn is None:
            return LOCAL
        address = self.extra().get("address") or conn.host or LOCAL
        if conn.port and address != LOCAL and not re.search(r":\d+$", address):
            address = f"{address}:{conn.port}"
        if address != LOCAL:
            raise AirflowException(
                f"Ray connection {self.conn_id!r} points at cluster {address!r}: remote Ray clusters are "
                "not supported yet; set host to 'local' to train inside the task"
            )
        return address

    def get_conn(self) -> str:
        return self.address()
