"""RayHook: where training runs - inside the task (embedded default) or on a Ray cluster - and the Ray Jobs
API protocol of remote training: submit-or-adopt, status, stop, log tail, result collection, sync and async.

One client: the sync methods use Ray's ``JobSubmissionClient`` (it uploads local ``runtime_env`` packages),
the async ones (the triggerer's) ``aiohttp`` against the same REST paths; both take the address, the auth
headers and TLS verification from :class:`RayClusterConfig`. (Longer than ~400 lines on purpose: the
connection, the protocol and its sync and async twins are kept side by side, so they cannot drift apart.)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowNotFoundException

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

    def jobs_url(self, submission_id: str | None = None, suffix: str = "") -> str:
        """``<dashboard>/api/jobs/`` or ``<dashboard>/api/jobs/<submission id><suffix>`` (the Jobs REST API)."""
        base = f"{self.dashboard_url.rstrip('/')}/api/jobs/"
        return base if submission_id is None else f"{base}{quote(submission_id, safe='')}{suffix}"

    def ssl_context(self) -> ssl.SSLContext | bool:
        """``verify`` as aiohttp takes it: a CA bundle's context, ``False`` (no checks) or ``True`` (default)."""
        if isinstance(self.verify, str):
            return ssl.create_default_context(cafile=self.verify)
        return bool(self.verify)

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


# ------------------------------------------------------------------------------------------ Ray Jobs protocol
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
ACTIVE_STATES = frozenset({"PENDING", "RUNNING"})
MAX_ATTEMPTS = 50  # submissions of one task instance's job (<id>, <id>-r2 ... -r50) before giving up
MAX_CONSECUTIVE_ERRORS = 10  # transient Jobs API errors tolerated in a row while waiting
STOPPING_WAIT_S = 60.0  # a new try waits this long for a job an earlier try is stopping, before resubmitting
REQUEST_TIMEOUT_S = 30.0  # one async request
STOP_TIMEOUT_S = 15.0  # one async stop request
LOG_TAIL_LINES = 40  # lines of a job's log quoted in a failure


class RayJobsApiError(AirflowException):
    """An answer of the Ray Jobs API that asking again cannot fix (HTTP 401, 403, 404)."""


class RayJobNotFoundError(RayJobsApiError):
    """The Jobs API does not know the submission id (HTTP 404)."""


def _status_name(status: Any) -> str:
    return str(getattr(status, "value", status))


def _is_not_found(exc: Exception) -> bool:
    text = str(exc)
    return "status code 404" in text or "does not exist" in text


@dataclass(frozen=True)
class RayJobInfo:
    """A Ray job as both clients report it (``JobDetails`` of the sync client, JSON of the REST API)."""

    submission_id: str
    status: str
    message: str | None = None
    error_type: str | None = None
    start_time: int | None = None
    end_time: int | None = None

    @classmethod
    def of(cls, submission_id: str, details: Any) -> RayJobInfo:
        def get(key: str) -> Any:
            return details.get(key) if isinstance(details, Mapping) else getattr(details, key, None)

        error_type = get("error_type")
        return cls(submission_id, _status_name(get("status")), get("message"),
                   _status_name(error_type) if error_type else None, get("start_time"), get("end_time"))

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATES

    @property
    def first_message_line(self) -> str | None:
        lines = (self.message or "").strip().splitlines()
        return lines[0] if lines else None


@dataclass(frozen=True)
class JobSubmission:
    """What :meth:`RayHook.submit_or_adopt` submits when it starts a new job."""

    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str] = field(default_factory=dict)


def ray_submission_id(dag_id: str, run_id: str, task_id: str, map_index: int | None = -1) -> str:
    """Deterministic Ray job submission id of one task instance, the same for every try: ``gd-<hash>``.

    A retry finds the job an earlier try submitted under this id (and ``<id>-r2``, ``-r3``... for
    resubmissions after a FAILED/STOPPED job) instead of starting a second one.
    """
    key = json.dumps([dag_id, run_id, task_id, -1 if map_index is None else int(map_index)])
    return "gd-" + hashlib.sha256(key.encode()).hexdigest()[:24]


def attempt_id(base: str, attempt: int) -> str:
    """The submission id of the ``attempt``-th job of one task instance: ``base``, ``base-r2``, ..."""
    return base if attempt <= 1 else f"{base}-r{attempt}"


def new_log_lines(logs: str, offset: int, *, final: bool) -> tuple[list[str], int]:
    """The lines of a Ray job's whole log text ``logs`` after ``offset`` characters (complete lines only,
    unless ``final``), and the new offset. A log shorter than ``offset`` was rotated or truncated: it is
    read from the start. The one tail rule of the sync and the async wait."""
    if len(logs) < offset:
        offset = 0
    chunk = logs[offset:]
    if not final:
        cut = chunk.rfind("\n")
        chunk = chunk[: cut + 1] if cut >= 0 else ""
    return chunk.splitlines(), offset + len(chunk)


def stop_marker_path(markers_dir: str | Path, submission_id: str) -> Path:
    """The file that marks ``submission_id`` as being stopped (written before any stop request)."""
    return Path(markers_dir) / f"{submission_id}.stop_requested"


def write_stop_marker(path: str | Path, who: str) -> None:
    """Mark a Ray job as being stopped: :meth:`RayHook.submit_or_adopt` never adopts such a job, however
    late the stop lands on the cluster."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(f"stop requested by {who} at {datetime.now(UTC).isoformat()}\n")


class RayHook(GdBaseHook):
    """Connection type ``ray``: where training runs, and the Ray Jobs API of a remote cluster.

    * no ``ray_default`` connection, or host ``local`` → Ray starts inside the task with the machine's CPUs;
    * a Jobs API (dashboard) address → training is submitted to that cluster as a Ray job: host
      ``http://ray-head:8265`` (or ``extra.address``), or host ``ray-head`` + port ``8265`` + schema
      ``http``. ``password`` = the cluster's Ray auth token (sent as ``Authorization: Bearer``; without it,
      Ray's own ``RAY_AUTH_MODE=token`` + ``RAY_AUTH_TOKEN``/``~/.ray/auth_token`` lookup applies).
      Extras: ``python`` (interpreter on the cluster, default ``python``), ``ui_url`` (dashboard as people
      reach it, for links), ``verify`` (TLS), ``runtime_env`` (merged into each job's runtime_env, e.g.
      ``{"working_dir": ...}`` when the cluster does not have ``gd_provider`` installed).
    * ``ray://`` (Ray Client) addresses are refused with a message naming the Jobs API address to use.

    Sync methods (the worker): :meth:`get_conn` (the ``JobSubmissionClient``), :meth:`submit_or_adopt`,
    :meth:`get_job_info`, :meth:`get_job_status`, :meth:`get_job_logs`, :meth:`stop_job`,
    :meth:`wait_for_job`, :meth:`wait_until_ended`, :meth:`collect_result`. Async twins (the triggerer):
    :meth:`async_get_job_info`, :meth:`async_get_status`, :meth:`async_get_logs`,
    :meth:`async_tail_job_logs`, :meth:`async_stop_job`, :meth:`async_wait_until_ended`; ``async with hook:``
    shares one HTTP session among them.

    :param ray_conn_id: the Ray connection (default ``ray_default``; missing = the embedded default).
    """

    conn_name_attr = "ray_conn_id"
    default_conn_name = "ray_default"
    conn_type = "ray"
    hook_name = "Ray"

    def __init__(self, ray_conn_id: str = default_conn_name) -> None:
        super().__init__(ray_conn_id)
        self._client: Any = None
        self._async_config: RayClusterConfig | None = None
        self._session: Any = None

    # ------------------------------------------------------------------------------------- connection
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

    def _remote(self, config: RayClusterConfig | None) -> RayClusterConfig:
        if config is None:
            raise RayConnectionError(
                f"Ray connection {self.conn_id!r} is the embedded default ('local'): there is no Jobs API"
            )
        return config

    def get_conn(self) -> Any:
        """The cluster's ``JobSubmissionClient`` (built once per hook; the token travels in a header)."""
        if self._client is None:
            self._client = job_client_for(self._remote(self.cluster_config()))
        return self._client

    # -------------------------------------------------------------------------------------- sync calls
    def get_job_info(self, submission_id: str) -> RayJobInfo | None:
        """The job, or ``None`` when the cluster does not know it."""
        try:
            details = self.get_conn().get_job_info(submission_id)
        except RuntimeError as exc:
            if _is_not_found(exc):
                return None
            raise AirflowException(f"Ray Jobs API error for job {submission_id}: {exc}") from exc
        return RayJobInfo.of(submission_id, details)

    def get_job_status(self, submission_id: str) -> str:
        """``PENDING`` / ``RUNNING`` / ``SUCCEEDED`` / ``FAILED`` / ``STOPPED``; :class:`RayJobNotFoundError`
        for an unknown job; transport errors (``OSError``, ``RuntimeError``) propagate."""
        try:
            return _status_name(self.get_conn().get_job_status(submission_id))
        except RuntimeError as exc:
            if _is_not_found(exc):
                raise RayJobNotFoundError(f"Ray job {submission_id} does not exist: {exc}") from exc
            raise

    def get_job_logs(self, submission_id: str) -> str:
        return self.get_conn().get_job_logs(submission_id) or ""

    def log_tail(self, submission_id: str, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the job's log (for failure messages; never raises)."""
        try:
            logs = self.get_job_logs(submission_id)
        except Exception as exc:
            return f"(job logs unavailable: {exc})"
        return "\n".join(logs.rstrip().splitlines()[-lines:])

    def tail_job_logs(self, submission_id: str, offset: int, *, final: bool = False) -> int:
        """Log the job's new log lines after ``offset`` (see :func:`new_log_lines`); the new offset."""
        try:
            logs = self.get_job_logs(submission_id)
        except Exception as exc:  # logs are a courtesy; the status decides
            self.log.debug("Could not fetch logs of Ray job %s: %s", submission_id, exc)
            return offset
        return self._log_lines(submission_id, logs, offset, final)

    def _log_lines(self, submission_id: str, logs: str, offset: int, final: bool) -> int:
        from gd_provider.core.training.logs import parse_marked_line

        lines, offset = new_log_lines(logs, offset, final=final)
        for line in lines:
            # the training's own lines carry their level (core.training.logs): an epoch line at INFO, Ray's
            # chatter at DEBUG, a warning at WARNING; anything else the job printed at INFO
            marked = parse_marked_line(line)
            if marked is None:
                self.log.info("[ray job %s] %s", submission_id, line)
            else:
                self.log.log(marked[0], "[ray job %s] %s", submission_id, marked[2])
        return offset

    def submit_job(self, submission_id: str, submission: JobSubmission) -> str:
        """Submit a new job under ``submission_id``; its status (a concurrent submission is adopted)."""
        try:
            self.get_conn().submit_job(
                entrypoint=submission.entrypoint, submission_id=submission_id,
                runtime_env=submission.runtime_env, metadata=submission.metadata,
            )
        except RuntimeError as exc:
            if "already exists" not in str(exc):
                raise AirflowException(f"submitting Ray job {submission_id} failed: {exc}") from exc
            self.log.info("Ray job %s was submitted concurrently by another try: adopting it", submission_id)
            info = self.get_job_info(submission_id)
            return info.status if info is not None else "PENDING"
        self.log.info("Submitted Ray job %s to %s: %s", submission_id, self.address(), submission.entrypoint)
        return "PENDING"

    def stop_job(self, submission_id: str, *, stop_marker: str | Path | None = None, who: str = "airflow") -> bool | None:
        """Write ``stop_marker`` (if given), then ask Ray to stop the job: whether it was running, or
        ``None`` when the request failed (logged, never raised)."""
        if stop_marker is not None:
            try:
                write_stop_marker(stop_marker, who)
            except OSError as exc:
                self.log.warning("Could not write the stop marker of Ray job %s: %s", submission_id, exc)
        try:
            stopped = bool(self.get_conn().stop_job(submission_id))
        except Exception as exc:
            self.log.warning("Could not stop Ray job %s: %s", submission_id, exc)
            return None
        self.log.info("Stop requested for Ray job %s (was running: %s)", submission_id, stopped)
        return stopped

    def wait_until_ended(self, submission_id: str, seconds: float, *, interval: float = 0.25) -> str | None:
        """Poll until the job is no longer PENDING/RUNNING or ``seconds`` pass; the last status seen (None if
        none could be read). Ray stops a job asynchronously: this is how a stop is seen to land."""
        deadline = time.monotonic() + seconds
        status = None
        while time.monotonic() < deadline:
            try:
                status = self.get_job_status(submission_id)
            except Exception:  # the stop was requested; the status is a courtesy
                return status
            if status not in ACTIVE_STATES:
                return status
            time.sleep(interval)
        return status

    def wait_for_job(
        self,
        submission_id: str,
        *,
        poll_interval: float,
        timeout: float | None = None,
        stop_marker: str | Path | None = None,
        who: str = "airflow",
        tail_logs: bool = True,
    ) -> str:
        """Poll until the job ends, copying its new log lines into the log; its terminal status. After
        ``timeout`` seconds the job is stopped and :class:`AirflowException` raised."""
        deadline = time.monotonic() + float(timeout) if timeout else None
        offset, errors = 0, 0
        while True:
            try:
                status = self.get_job_status(submission_id)
                if tail_logs:
                    offset = self.tail_job_logs(submission_id, offset, final=status not in ACTIVE_STATES)
                errors = 0
            except RayJobNotFoundError as exc:
                raise AirflowException(f"Ray job {submission_id} disappeared from the cluster (restarted?): {exc}") from exc
            except (OSError, RuntimeError) as exc:
                errors += 1
                if errors >= MAX_CONSECUTIVE_ERRORS:
                    raise AirflowException(f"Ray Jobs API kept failing while waiting for {submission_id}: {exc}") from exc
                self.log.warning("Polling Ray job %s failed (%d in a row): %s", submission_id, errors, exc)
                time.sleep(poll_interval)
                continue
            if status not in ACTIVE_STATES:
                return status
            if deadline is not None and time.monotonic() > deadline:
                self.stop_job(submission_id, stop_marker=stop_marker, who=who)
                raise AirflowException(f"Ray job {submission_id} still {status} after job_timeout={timeout} s: stopped it")
            time.sleep(poll_interval)

    def submit_or_adopt(
        self,
        base_id: str,
        prepare: Callable[[str], JobSubmission],
        *,
        adoptable: Callable[[str], bool] = lambda submission_id: True,
        markers_dir: str | Path | None = None,
        poll_interval: float = 1.0,
        who: str = "airflow",
    ) -> tuple[str, str]:
        """``(submission id, status)`` of the job of a task instance whose jobs are ``base_id``,
        ``base_id-r2``...: the latest one when it is PENDING/RUNNING (a worker restarted: adopt it) or
        SUCCEEDED (use its result), else a new one, ``prepare(new id)`` submitted as the next attempt.

        :param adoptable: whether a running or finished job did the training asked for now (False: a
            running one is stopped and a new one submitted).
        :param markers_dir: where stop markers live: a job marked as being stopped is waited for (up to
            ``STOPPING_WAIT_S``) and resubmitted, never adopted.
        """
        previous: RayJobInfo | None = None
        attempt = 1
        while attempt <= MAX_ATTEMPTS:
            info = self.get_job_info(attempt_id(base_id, attempt))
            if info is None:
                break
            previous, attempt = info, attempt + 1
        if previous is not None:
            prev_id, status = previous.submission_id, previous.status
            marker = stop_marker_path(markers_dir, prev_id) if markers_dir is not None else None
            if (status in ACTIVE_STATES or status == "SUCCEEDED") and not adoptable(prev_id):
                # A cleared task rerun with other settings (a rerun override) must not adopt the old job.
                self.log.warning("Ray job %s (%s) trained other settings or data than this try: not adopting it",
                                 prev_id, status)
                if status in ACTIVE_STATES:
                    self.stop_job(prev_id, stop_marker=marker, who=who)
                status = "SUPERSEDED"
            if status in ACTIVE_STATES and marker is not None and marker.exists():
                status = self._wait_for_stopping_job(prev_id, status, poll_interval, marker, who)
            if status in ACTIVE_STATES:
                self.log.info("Adopting Ray job %s (%s), submitted by an earlier try of this task", prev_id, status)
                return prev_id, status
            if status == "SUCCEEDED":
                self.log.info("Ray job %s of an earlier try already SUCCEEDED: using its result", prev_id)
                return prev_id, status
            if attempt > MAX_ATTEMPTS:
                raise AirflowFailException(f"Ray job {base_id} was already submitted {MAX_ATTEMPTS} times; giving up")
            self.log.warning("Ray job %s of an earlier try ended %s (%s); resubmitting as %s", prev_id, status,
                             previous.first_message_line or "no message", attempt_id(base_id, attempt))
        submission_id = attempt_id(base_id, attempt)
        return submission_id, self.submit_job(submission_id, prepare(submission_id))

    def _wait_for_stopping_job(self, submission_id: str, status: str, poll_interval: float, marker: Path,
                               who: str) -> str:
        """The status of a job that an earlier try asked to stop, once it has ended (bounded wait)."""
        self.log.info("Ray job %s is %s but an earlier try asked to stop it: waiting for it to end, then "
                      "resubmitting", submission_id, status)
        deadline = time.monotonic() + STOPPING_WAIT_S
        while status in ACTIVE_STATES and time.monotonic() < deadline:
            time.sleep(min(1.0, poll_interval))
            status = self.get_job_status(submission_id)
        if status in ACTIVE_STATES:
            self.stop_job(submission_id, stop_marker=marker, who=who)
            raise AirflowException(
                f"Ray job {submission_id} is still {status} {STOPPING_WAIT_S:.0f} s after an earlier try asked to "
                "stop it: not adopting it; a retry resubmits once it has ended"
            )
        return status

    def collect_result(self, submission_id: str, status: str, request_path: str | Path) -> tuple[Any, dict[str, Any]]:
        """``(TrainingResult, request)`` of a finished training job (``core.training.entrypoint``'s request
        and result files). An input error reported by the job raises :class:`AirflowFailException` (no
        retry); a failed or stopped job :class:`AirflowException` (a retry resubmits); both quote the log."""
        from gd_provider.core.training.runner import TrainingResult

        request_path = Path(request_path)
        try:
            request = json.loads(request_path.read_text())
        except (OSError, ValueError) as exc:
            raise AirflowFailException(
                f"Ray job {submission_id} ended {status}, but its request {request_path} cannot be read: {exc}"
            ) from exc
        result_path = Path(request["result_path"])
        envelope = json.loads(result_path.read_text()) if result_path.is_file() else None
        if envelope is not None and envelope.get("kind") == "input_error":
            raise AirflowFailException(
                f"cannot train: {envelope.get('error')} (Ray job {submission_id} {status}). Last lines of its "
                f"log:\n{self.log_tail(submission_id)}"
            )
        if status == "SUCCEEDED":
            if envelope is None or envelope.get("kind") != "result":
                raise AirflowFailException(
                    f"Ray job {submission_id} SUCCEEDED but wrote no result at {result_path}: the Ray cluster and "
                    "the Airflow workers must see the project home at the same path (shared volume)"
                )
            return TrainingResult.from_dict(envelope["result"]), request
        info = self.get_job_info(submission_id)
        message = info.first_message_line if info is not None else None
        error_type = info.error_type if info is not None else None
        raise AirflowException(
            f"Ray job {submission_id} ended {status}"
            + (f" ({error_type})" if error_type else "")
            + (f": {message}" if message else "")
            + f". A retry resubmits it as a new job. Last lines of its log:\n{self.log_tail(submission_id)}"
        )

    # ------------------------------------------------------------------------------------- async calls
    async def async_cluster_config(self) -> RayClusterConfig:
        """The remote cluster's configuration, read without blocking the event loop."""
        if self._async_config is None:
            try:
                conn = await self.aget_connection(self.conn_id)
            except AirflowNotFoundException:
                if self.conn_id != self.default_conn_name:
                    raise
                conn = None
            config = None
            if conn is not None:
                extra = await conn.aextra_dejson() if hasattr(conn, "aextra_dejson") else conn.extra_dejson
                config = parse_ray_connection(conn.host, conn.port, conn.schema, conn.password, extra, self.conn_id)
            self._async_config = self._remote(config)
        return self._async_config

    async def _new_session(self) -> Any:
        import aiohttp

        config = await self.async_cluster_config()
        headers = await asyncio.to_thread(config.auth_headers)
        return aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            connector=aiohttp.TCPConnector(ssl=config.ssl_context()),
        )

    async def __aenter__(self) -> RayHook:
        if self._session is None:
            self._session = await self._new_session()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @contextlib.asynccontextmanager
    async def _async_session(self) -> AsyncIterator[Any]:
        if self._session is not None:
            yield self._session
            return
        async with await self._new_session() as session:
            yield session

    async def _arequest(self, method: str, submission_id: str, suffix: str = "", *, timeout: float | None = None,
                        what: str) -> Any:
        """JSON of ``<method> /api/jobs/<id><suffix>``; :class:`RayJobsApiError` for 401/403/404, aiohttp's
        errors (and ``TimeoutError``) for what may pass."""
        import aiohttp

        config = await self.async_cluster_config()
        kwargs = {} if timeout is None else {"timeout": aiohttp.ClientTimeout(total=timeout)}
        async with self._async_session() as session, session.request(
            method, config.jobs_url(submission_id, suffix), **kwargs
        ) as resp:
            if resp.status in (401, 403, 404):
                text = (await resp.text())[:500]
                error = RayJobNotFoundError if resp.status == 404 else RayJobsApiError
                raise error(f"{what}: HTTP {resp.status}: {text}")
            resp.raise_for_status()
            return await resp.json()

    async def async_get_job_info(self, submission_id: str, *, timeout: float | None = None) -> RayJobInfo:
        data = await self._arequest("GET", submission_id, timeout=timeout, what=f"Ray job {submission_id}")
        return RayJobInfo.of(submission_id, data)

    async def async_get_status(self, submission_id: str, *, timeout: float | None = None) -> str:
        return (await self.async_get_job_info(submission_id, timeout=timeout)).status

    async def async_get_logs(self, submission_id: str) -> str:
        data = await self._arequest("GET", submission_id, "/logs", what=f"logs of Ray job {submission_id}")
        return data.get("logs") or ""

    async def async_tail_job_logs(self, submission_id: str, offset: int, *, final: bool = False) -> int:
        """:meth:`tail_job_logs` without blocking the event loop."""
        try:
            logs = await self.async_get_logs(submission_id)
        except Exception as exc:  # logs are a courtesy; the status poll decides
            self.log.debug("Could not fetch logs of Ray job %s: %s", submission_id, exc)
            return offset
        return self._log_lines(submission_id, logs, offset, final)

    async def async_stop_job(self, submission_id: str, *, stop_marker: str | Path | None = None,
                             who: str = "airflow") -> bool | None:
        """:meth:`stop_job` without blocking the event loop (logged, never raised)."""
        if stop_marker is not None:
            try:
                await asyncio.to_thread(write_stop_marker, stop_marker, who)
            except OSError as exc:
                self.log.warning("Could not write the stop marker %s: %s", stop_marker, exc)
        try:
            data = await self._arequest("POST", submission_id, "/stop", timeout=STOP_TIMEOUT_S,
                                        what=f"stopping Ray job {submission_id}")
            stopped = bool(data.get("stopped"))
        except Exception as exc:
            self.log.warning("Could not stop Ray job %s: %s", submission_id, exc)
            return None
        self.log.info("Stop requested for Ray job %s (was running: %s)", submission_id, stopped)
        return stopped

    async def async_wait_until_ended(self, submission_id: str, seconds: float, *, interval: float = 0.5) -> str | None:
        """Poll until the job is terminal or ``seconds`` pass (each request bounded by what is left, so the
        whole wait keeps to ``seconds``); the last status seen. Errors are logged, not raised."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        status = None
        try:
            while True:
                status = await self.async_get_status(submission_id, timeout=max(0.5, deadline - loop.time()))
                if status in TERMINAL_STATES or loop.time() >= deadline:
                    return status
                await asyncio.sleep(min(interval, max(0.0, deadline - loop.time())))
        except Exception as exc:  # the stop was requested; its landing is a courtesy
            self.log.warning("Could not follow Ray job %s after the stop request: %s", submission_id, exc)
            return status
