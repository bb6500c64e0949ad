"""MlflowHook: an Airflow connection → tracking/registry URIs for the plain core."""

from __future__ import annotations

from typing import Any

from gd_provider import settings
from gd_provider.core.registry import MlflowConfig
from gd_provider.hooks._base import GdBaseHook, strip_credentials

EMBEDDED_UI_URL = "http://localhost:5000"


class MlflowHook(GdBaseHook):
    """Connection type ``mlflow``.

    * no ``mlflow_default`` connection → embedded default: SQLite store ``<home>/mlflow/mlflow.db``
      for tracking and registry, artifacts under ``<home>/mlflow/artifacts``;
    * ``host`` (with ``schema``/``port``) → an MLflow server, e.g. host ``mlflow``, port 5000,
      schema ``http``; or ``extra.tracking_uri`` to give the full URI (``postgresql://…``, ``sqlite:///…``);
    * credentials: ``login`` + ``password`` → HTTP basic auth, a ``password`` alone → a bearer token, or
      ``user:pw@`` in an HTTP(S) ``tracking_uri``; they reach MLflow as ``MLFLOW_TRACKING_USERNAME`` /
      ``MLFLOW_TRACKING_PASSWORD`` / ``MLFLOW_TRACKING_TOKEN`` and are stripped from every URI it prints;
    * ``extra.registry_uri`` when the registry lives elsewhere; ``extra.artifact_root`` for the artifact
      location of experiments this package creates (a shared volume or object store on the stack);
      ``extra.ui_url`` for the extra links (default: the server itself, or ``http://localhost:5000``,
      where ``mlflow ui`` serves the embedded store).
    """

    conn_name_attr = "mlflow_conn_id"
    default_conn_name = "mlflow_default"
    conn_type = "mlflow"
    hook_name = "MLflow"
    extra_fields = frozenset({"tracking_uri", "registry_uri", "artifact_root", "ui_url"})

    def __init__(self, mlflow_conn_id: str = default_conn_name) -> None:
        super().__init__(mlflow_conn_id)

    def get_config(self) -> MlflowConfig:
        conn = self.connection()
        extra = self.extra()
        if conn is None or not (conn.host or extra.get("tracking_uri")):
            if conn is not None:
                self.log.info("Connection %r names no host or tracking_uri: using the embedded MLflow store",
                              self.conn_id)
            root = settings.subdir("mlflow")
            tracking = f"sqlite:///{root / 'mlflow.db'}"
            return MlflowConfig(
                tracking_uri=extra.get("tracking_uri", tracking),
                registry_uri=extra.get("registry_uri"),
                artifact_root=extra.get("artifact_root", str(settings.subdir("mlflow", "artifacts"))),
                # the README's `mlflow ui` command serves the embedded store here
                ui_url=extra.get("ui_url", EMBEDDED_UI_URL),
            )
        tracking = str(extra.get("tracking_uri") or "")
        if not tracking:
            scheme = conn.schema or "http"
            port = f":{conn.port}" if conn.port else ""
            tracking = f"{scheme}://{conn.host}{port}"
        return MlflowConfig(
            tracking_uri=tracking,
            registry_uri=extra.get("registry_uri"),
            artifact_root=extra.get("artifact_root"),
            # login + password: HTTP basic auth; a password alone: a bearer token. Either goes to MLflow through
            # its environment variables, never in the URI (MlflowConfig also moves user:pw@ out of tracking_uri)
            token=None if conn.login else conn.password or None,
            username=(conn.login or None) if conn.password else None,
            password=(conn.password or None) if conn.login else None,
            # links end up in XCom and the UI: never with credentials from the tracking URI
            ui_url=strip_credentials(
                extra.get("ui_url") or (tracking if tracking.startswith(("http://", "https://")) else None)
            ),
        )

    def get_conn(self) -> Any:
        """An ``MlflowClient`` bound to this connection (also sets the process's MLflow URIs)."""
        return self.get_config().client()
