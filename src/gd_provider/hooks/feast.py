"""FeastHook: an Airflow connection → a Feast ``FeatureStore``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowException

from gd_provider import settings
from gd_provider.hooks._base import GdBaseHook


class FeastHook(GdBaseHook):
    """Connection type ``feast``: ``extra.repo_path`` is the feature repo (the folder holding
    ``feature_store.yaml``). Without a ``feast_default`` connection: ``<home>/feature_repo``."""

    conn_name_attr = "feast_conn_id"
    default_conn_name = "feast_default"
    conn_type = "feast"
    hook_name = "Feast"

    def __init__(self, feast_conn_id: str = default_conn_name) -> None:
        super().__init__(feast_conn_id)

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["host", "schema", "login", "password", "port"],
            "placeholders": {"extra": '{"repo_path": "/opt/feature_repo"}'},
        }

    def repo_path(self) -> Path:
        raw = self.extra().get("repo_path")
        return Path(raw).expanduser() if raw else settings.project_home() / "feature_repo"

    def get_conn(self) -> Any:
        from feast import FeatureStore

        repo = self.repo_path()
        if not (repo / "feature_store.yaml").is_file():
            raise AirflowException(
                f"Feast repo {repo} has no feature_store.yaml (connection {self.conn_id!r}); "
                "create it first (the demo does: `make demo`) or set extra.repo_path"
            )
        return FeatureStore(repo_path=str(repo))
