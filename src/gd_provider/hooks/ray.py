"""RayHook: where training runs - inside the task (embedded default) or on a Ray cluster via the Jobs API."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from airflow.sdk.exceptions import AirflowException

from gd_provider.hooks._base import GdBaseHook, check_extra_fields

LOCAL = "local"
DEFAULT_JOBS_PORT = 8265
# Ray's JobSubmissionClient lets these environment variables override the address it is given; the
# connection is the only switch here, so they are masked while a client is built.
_ADDRESS_ENV_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")


class RayConnectionError(AirflowException):
    """The Ray connection cannot be turned into a Jobs API address."""


@dataclass(frozen=True)
class RayClusterConfig:
    """A remote Ray cluster as the operator and the trigger see it (no Airflow objects, picklable)."""

    dashboard_url: str  # Jobs API / dashboard, e.g. http://ray-head:8265
    token: str | None = field(default=None, repr=False)  # Ray auth token; never logged
    python: str = "python"  # interpreter on the cluster that runs the entrypoint
    ui_url: str | None = None  # where people open the dashboard (links); default dashboard_url
    verify: bool | str = True  # TLS verification for https (bool or CA bundle path)
    runtime_env: dict[str, Any] = field(default_factory=dict)  # merged into every job's runtime_env

    @property
    def link_base(self) -> str:
        """The dashboard for links and tags, never with credentials from the address."""
        from gd_provider.hooks._base import strip_credentials

        return str(strip_credentials(self.ui_url or self.dashboard_url)).rstrip("/")

    def auth_headers(self) -> dict[str, str]:
        """``Authorization: Bearer <token>`` when the connection has a token, else what Ray itself would
        send (``RAY_AUTH_MODE=token`` with ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH`` /
        ``~/.ray/auth_token`` in this process's environment), else nothing."""
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        try:
            from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled

            return dict(get_auth_headers_if_auth_enabled({}))
        except Exception:  # ray internals moved, or no token: the server answers 401 with a clear message
            return {}


RAY_EXTRA_FIELDS = frozenset({"address", "runtime_env", "verify", "python", "ui_url"})


def parse_ray_connection(
    host: str | None,
    port: int | None,
    schema: str | None,
    password: str | None,
    extra: dict[str, Any],
    conn_id: str = "ray_default",
) -> RayClusterConfig | None:
    """``None`` for the embedded default (``local``), else the cluster's Jobs API configuration.

    Accepted: a URL ``http(s)://head:8265`` in host or ``extra.address`` (the connection's port is used
    when the URL has none); or host ``head`` + port + schema (defaults: ``http``, 8265). Ray Client addresses (``ray://``) are refused: training is submitted as a
    Ray job, so the connection must name the Jobs API (dashboard) address.
    """
    check_extra_fields(conn_id, "Ray", extra, RAY_EXTRA_FIELDS)
    address = str(extra.get("address") or host or LOCAL).strip()
    if address.lower() == LOCAL:
        return None
    if address.lower() == "auto":
        raise RayConnectionError(
            f"Ray connection {conn_id!r}: 'auto' is not a Jobs API address; give the dashboard address of "
            "the cluster, e.g. http://ray-head:8265, or 'local' to train inside the task"
        )
    if "://" in address:
        parts = urlsplit(address)
        scheme = parts.scheme.lower()
        if scheme == "ray":
            raise RayConnectionError(
                f"Ray connection {conn_id!r} points at the Ray Client address {address!r}: training is "
                "submitted through the Ray Jobs API, so give the cluster's Jobs API (dashboard) address "
                f"instead, e.g. http://{parts.hostname or 'ray-head'}:{DEFAULT_JOBS_PORT}"
            )
        if scheme not in ("http", "https"):
            raise RayConnectionError(
                f"Ray connection {conn_id!r}: unsupported scheme in {address!r}; use the Jobs API (dashboard) "
                f"address, e.g. http://ray-head:{DEFAULT_JOBS_PORT}"
            )
        if not parts.hostname:
            raise RayConnectionError(f"Ray connection {conn_id!r}: no host in {address!r}")
        netloc = parts.netloc
        if parts.port is None and port:  # a URL without a port keeps its scheme's default (a proxy)
            netloc = f"{netloc}:{port}"
        url = f"{scheme}://{netloc}{parts.path.rstrip('/')}"
    else:
        scheme = (schema or "http").lower()
        if scheme == "ray":
            raise RayConnectionError(
                f"Ray connection {conn_id!r} has schema 'ray' (Ray Client): training is submitted through "
                f"the Ray Jobs API; use schema http and the dashboard port ({DEFAULT_JOBS_PORT})"
            )
        if scheme not in ("http", "https"):
            raise RayConnectionError(f"Ray connection {conn_id!r}: schema must be http or https, got {schema!r}")
        hostport = address.rstrip("/")
        if ":" not in hostport.rsplit("]", 1)[-1]:
            hostport = f"{hostport}:{port or DEFAULT_JOBS_PORT}"
        url = f"{scheme}://{hostport}"
    runtime_env = extra.get("runtime_env") or {}
    if not isinstance(runtime_env, dict):
        raise RayConnectionError(f"Ray connection {conn_id!r}: extra.runtime_env must be a mapping")
    verify = extra.get("verify", True)
    if isinstance(verify, str) and verify.lower() in ("true", "false"):
        verify = verify.lower() == "true"
    return RayClusterConfig(
        dashboard_url=url,
        token=password or None,
        python=str(extra.get("python") or "python"),
        ui_url=extra.get("ui_url") or None,
        verify=verify,
        runtime_env=dict(runtime_env),
    )


@contextlib.contextmanager
def _address_env_masked() -> Iterator[None]:
    saved = {name: os.environ.pop(name) for name in _ADDRESS_ENV_VARS if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def job_client_for(config: RayClusterConfig) -> Any:
    """A ``ray.job_submission.JobSubmissionClient`` for ``config`` (checks the connection: GET /api/version)."""
    from ray.job_submission import JobSubmissionClient

    headers = config.auth_headers() or None
    try:
        with _address_env_masked():
            return JobSubmissionClient(config.dashboard_url, headers=headers, verify=config.verify)
    except ConnectionError as exc:
        raise RayConnectionError(
            f"cannot reach the Ray Jobs API at {config.dashboard_url}: {exc}; check that the head node's "
            "dashboard runs (ray[default], --include-dashboard true) and listens on that address"
        ) from exc


class RayHook(GdBaseHook):
    """Connection type ``ray``.

    * no ``ray_default`` connection, or host ``local`` → Ray starts inside the task with the machine's CPUs;
    * a Jobs API (dashboard) address → training is submitted to that cluster as a Ray job: host
      ``http://ray-head:8265`` (or ``extra.address``), or host ``ray-head`` + port ``8265`` + schema
      ``http``. ``password`` = the cluster's Ray auth token (sent as ``Authorization: Bearer``; without it,
      Ray's own ``RAY_AUTH_MODE=token`` + ``RAY_AUTH_TOKEN``/``~/.ray/auth_token`` lookup applies).
      Extras: ``python`` (interpreter on the cluster, default ``python``), ``ui_url`` (dashboard as people
      reach it, for links), ``verify`` (TLS), ``runtime_env`` (merged into each job's runtime_env, e.g.
      ``{"working_dir": ...}`` when the cluster does not have ``gd_provider`` installed).
    * ``ray://`` (Ray Client) addresses are refused with a message naming the Jobs API address to use.
    """

    conn_name_attr = "ray_conn_id"
    default_conn_name = "ray_default"
    conn_type = "ray"
    hook_name = "Ray"

    def __init__(self, ray_conn_id: str = default_conn_name) -> None:
        super().__init__(ray_conn_id)

    def cluster_config(self) -> RayClusterConfig | None:
        """``None`` for the embedded default, else the remote cluster's Jobs API configuration."""
        conn = self.connection()
        if conn is None:
            return None
        return parse_ray_connection(conn.host, conn.port, conn.schema, conn.password, self.extra(), self.conn_id)

    def is_local(self) -> bool:
        return self.cluster_config() is None

    def address(self) -> str:
        """``local`` or the cluster's Jobs API URL."""
        config = self.cluster_config()
        return LOCAL if config is None else config.dashboard_url

    def dashboard_url(self) -> str | None:
        """The dashboard as people open it (extra links), or None for the embedded default."""
        config = self.cluster_config()
        return None if config is None else config.link_base

    def job_client(self) -> Any:
        """``JobSubmissionClient`` of the connection's cluster (the token travels in a header)."""
        config = self.cluster_config()
        if config is None:
            raise RayConnectionError(
                f"Ray connection {self.conn_id!r} is the embedded default ('local'): there is no Jobs API"
            )
        return job_client_for(config)

    def get_conn(self) -> str:
        return self.address()
