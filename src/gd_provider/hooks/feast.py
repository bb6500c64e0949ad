"""FeastHook: an Airflow connection → a Feast ``FeatureStore``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowException

from gd_provider import settings
from gd_provider.hooks._base import GdBaseHook

PASSWORD_ENV = "REDIS_PASSWORD"  # the variable feature_store.yaml uses for the connection's password


class FeastHook(GdBaseHook):
    """Connection type ``feast``: ``extra.repo_path`` is the feature repo (the folder holding
    ``feature_store.yaml``). Without a ``feast_default`` connection: ``<home>/feature_repo``.

    ``password`` is the online store's password (e.g. Redis ``requirepass``): ``feature_store.yaml`` refers
    to it as ``${REDIS_PASSWORD}`` (or the variable named by ``extra.password_env``), which Feast expands
    when it loads the file - so the password lives in the connection (or a secrets backend), is masked in
    task logs like every connection password, and is never written to the repo.
    """

    conn_name_attr = "feast_conn_id"
    default_conn_name = "feast_default"
    conn_type = "feast"
    hook_name = "Feast"
    extra_fields = frozenset({"repo_path", "password_env"})

    def __init__(self, feast_conn_id: str = default_conn_name) -> None:
        super().__init__(feast_conn_id)

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
        conn = self.connection()
        if conn is None or not conn.password:
            return FeatureStore(repo_path=str(repo))
        from feast.repo_config import load_repo_config

        var = str(self.extra().get("password_env") or PASSWORD_ENV)
        # Feast expands ${VAR} from the environment while it loads the file; the password is there only
        # for that moment (the loaded config keeps it, in this process)
        saved = os.environ.get(var)
        os.environ[var] = conn.password
        try:
            config = load_repo_config(repo, repo / "feature_store.yaml")
        finally:
            if saved is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = saved
        return FeatureStore(repo_path=str(repo), config=config)
