"""The docker-compose stack's parts as plain local processes (no Docker): for system tests and for
trying the stack on one machine.

* PostgreSQL must already run (CI starts it; see ``.ci/run``): this module creates private databases in it
  (:func:`create_database`). Redis: :func:`redis_server` is the command line of a private,
  password-protected ``redis-server`` (what the system tests start); :class:`RedisDb` claims a private db
  number on a Redis server, so several runs can share one.
* :func:`start_service` launches a long-running command in its own process group with its output in a
  log file; :meth:`Service.stop` terminates the whole group, then kills it after a grace period.
* :func:`mlflow_server_argv`, :func:`airflow_environment` and :data:`AIRFLOW_COMPONENTS` describe the
  services the way ``docker-compose.yaml`` runs them; :class:`AirflowRest` talks to the Airflow REST API.

No Airflow import here: the Airflow processes are configured through their environment only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"
REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379

# api-server first: the others need its execution API; then the scheduler, the DAG processor, the triggerer
AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")

_QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    "GX_ANALYTICS_ENABLED": "false",
    "FEAST_USAGE": "False",
}


class StackError(RuntimeError):
    """A service did not come up (the message carries the tails of the relevant logs)."""


def venv_bin(name: str) -> str:
    """A console script next to this interpreter (``.venv/bin/airflow``), else the one on PATH."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports that were free a moment ago (all bound at once, so no duplicates)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tcp_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_get(url: str, timeout: float = 3.0) -> tuple[int, bytes] | None:
    """``(status, body)``, or ``None`` when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, ValueError):
        return None


def quiet_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) without Airflow/Ray/MLflow settings that would point
    a child at another installation, plus the no-telemetry switches."""
    env = {
        k: v
        for k, v in (os.environ if base is None else base).items()
        if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_"))
        and k not in ("AIRFLOW_HOME", "RAY_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI",
                      "GD_PROVIDER_HOME", "PYTEST_CURRENT_TEST")
    }
    env.update(_QUIET_ENV)
    return env


# --------------------------------------------------------------------------------------------- processes
@dataclass
class Service:
    """A long-running command in its own process group, output in ``log_path``."""

    name: str
    argv: list[str]
    proc: subprocess.Popen
    log_path: Path
    started_at: float = field(default_factory=time.monotonic)
    ready_after_s: float | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, chars: int = 4000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"<no log: {exc}>"
        return text[-chars:]

    known_pids: set[int] = field(default_factory=set)

    def remember_descendants(self) -> None:
        """Note the processes under this one, to kill any that left the process group (``setsid``)."""
        self.known_pids |= descendants(self.proc.pid)

    def stop(self, grace_s: float = 20.0) -> int | None:
        """SIGTERM to the process group, SIGKILL to what is left after ``grace_s`` (the group, and by pid
        any remembered descendant that left it). Returns the leader's exit code."""
        self.remember_descendants()
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace_s)
        # children (LocalExecutor workers, api-server workers, raylets) may outlive the leader
        _signal_group(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while (alive := self.known_pids & set(process_table())) and time.monotonic() < deadline:
            time.sleep(0.25)
        for pid in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        return self.proc.returncode


def process_table() -> dict[int, int]:
    """pid → ppid of every live (non-zombie) process (Linux /proc)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            table[int(entry)] = int(fields[1])
    return table


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, ppid in process_table().items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def start_service(name: str, argv: list[str], *, env: Mapping[str, str], log_dir: Path,
                  cwd: str | os.PathLike[str] | None = None) -> Service:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(env), cwd=cwd, start_new_session=True)
    return Service(name=name, argv=list(argv), proc=proc, log_path=log_path)


def stop_all(services: Iterable[Service], grace_s: float = 20.0) -> dict[str, float]:
    """Stop several services at once: SIGTERM to every group, one shared grace period, then SIGKILL to
    what is left. Returns how long each leader took to exit (``grace_s`` or more: it was killed)."""
    services = list(services)
    t0 = time.monotonic()
    took: dict[str, float] = {}
    for svc in services:
        svc.remember_descendants()
        if svc.alive():
            _signal_group(svc.proc.pid, signal.SIGTERM)
        else:
            took[svc.name] = 0.0
    while time.monotonic() - t0 < grace_s and any(svc.alive() for svc in services):
        for svc in services:
            if svc.name not in took and not svc.alive():
                took[svc.name] = time.monotonic() - t0
        time.sleep(0.2)
    for svc in services:
        if svc.name not in took:
            took[svc.name] = time.monotonic() - t0
        svc.stop(grace_s=0)
    return took


def log_tails(services: Iterable[Service], chars: int = 3000) -> str:
    parts = []
    for svc in services:
        state = "running" if svc.alive() else f"exited {svc.proc.returncode}"
        parts.append(f"----- {svc.name} ({state}) {svc.log_path} -----\n{svc.tail(chars)}")
    return "\n".join(parts)


def wait_until(check: Callable[[], Any], *, timeout_s: float, what: str, services: Iterable[Service] = (),
               interval_s: float = 0.5) -> tuple[Any, float]:
    """Poll ``check`` until it returns something truthy. Fails early when one of ``services`` exits.
    Returns ``(value, seconds waited)``."""
    services = list(services)
    t0 = time.monotonic()
    last_exc: BaseException | None = None
    while True:
        try:
            value = check()
            if value:
                return value, time.monotonic() - t0
        except Exception as exc:  # keep polling; report the last error on timeout
            last_exc = exc
        dead = [s for s in services if not s.alive()]
        if dead or time.monotonic() - t0 > timeout_s:
            why = f"{', '.join(s.name for s in dead)} exited" if dead else f"timed out after {timeout_s:.0f} s"
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            raise StackError(f"waiting for {what}: {why}{detail}\n{log_tails(services)}")
        time.sleep(interval_s)


# --------------------------------------------------------------------------------------------- PostgreSQL
def _pg_connect(dbname: str = "postgres", host: str = PG_HOST, port: int = PG_PORT, user: str = PG_USER):
    import psycopg2

    conn = psycopg2.connect(host=host, port=port, user=user, dbname=dbname, connect_timeout=5)
    conn.autocommit = True
    return conn


def postgres_ready(host: str = PG_HOST, port: int = PG_PORT, user: str = PG_USER) -> bool:
    try:
        _pg_connect(host=host, port=port, user=user).close()
        return True
    except Exception:
        return False


def unique_db_prefix(tag: str = "gd_sys") -> str:
    """``<tag>_<unix time>_<random>``: unique, and old leftovers can be recognised by their age."""
    return f"{tag}_{int(time.time())}_{secrets.token_hex(3)}"


def create_database(name: str, **conn: Any) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"unsafe database name {name!r}")
    c = _pg_connect(**conn)  # not ``with c``: that opens a transaction, and CREATE DATABASE refuses one
    try:
        with c.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        c.close()
    return name


def drop_database(name: str, **conn: Any) -> None:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"unsafe database name {name!r}")
    c = _pg_connect(**conn)
    try:
        with c.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        c.close()


def drop_stale_databases(tag: str = "gd_sys", max_age_s: float = 6 * 3600, **conn: Any) -> list[str]:
    """Drop databases named by :func:`unique_db_prefix` that are older than ``max_age_s`` (left by a killed
    run). Younger ones may belong to a run in progress and are kept."""
    c = _pg_connect(**conn)
    try:
        with c.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{tag}\\_%",))
            names = [r[0] for r in cur.fetchall()]
    finally:
        c.close()
    dropped = []
    now = time.time()
    for name in names:
        m = re.fullmatch(rf"{re.escape(tag)}_(\d+)_[0-9a-f]+_\w+", name)
        if m and now - int(m.group(1)) > max_age_s:
            drop_database(name, **conn)
            dropped.append(name)
    return dropped


def database_uri(name: str, host: str = PG_HOST, port: int = PG_PORT, user: str = PG_USER,
                 password: str | None = None) -> str:
    """SQLAlchemy URL of a database (with ``password`` when given; trust auth ignores it)."""
    from urllib.parse import quote

    auth = f"{user}:{quote(password, safe='')}" if password else user
    return f"postgresql+psycopg2://{auth}@{host}:{port}/{name}"


def pg_query(dbname: str, sql: str, params: Iterable[Any] = (), **conn: Any) -> list[tuple]:
    """Rows of one query against ``dbname`` (for checks on what a service stored)."""
    c = _pg_connect(dbname=dbname, **conn)
    try:
        with c.cursor() as cur:
            cur.execute(sql, tuple(params))
            return cur.fetchall()
    finally:
        c.close()


# --------------------------------------------------------------------------------------------- Redis
class RedisDb:
    """A Redis db number held by this run: claimed with an expiring owner key (``SET NX``), emptied at
    claim and at release. Keys other than the owner key are what the run stored."""

    OWNER_KEY = "__gd_stack_owner__"

    def __init__(self, client: Any, db: int, token: str, host: str, port: int, lease_s: int = 3600,
                 password: str | None = None) -> None:
        self.client, self.db, self.token, self.host, self.port = client, db, token, host, port
        self.lease_s = lease_s
        self.password = password

    @classmethod
    def claim(cls, host: str = REDIS_HOST, port: int = REDIS_PORT, dbs: Iterable[int] = range(15, 0, -1),
              lease_s: int = 3600, password: str | None = None) -> RedisDb:
        import redis

        token = secrets.token_hex(8)
        for db in dbs:
            client = redis.Redis(host=host, port=port, db=db, password=password, socket_timeout=10)
            if client.set(cls.OWNER_KEY, token, nx=True, ex=lease_s):
                held = cls(client, db, token, host, port, lease_s, password)
                held.flush()
                return held
            client.close()
        raise StackError(f"no free Redis db on {host}:{port} (all of {list(dbs)} are held)")

    @property
    def connection_string(self) -> str:
        """Feast's ``online_store.connection_string`` (no password: see :meth:`feast_connection_string`)."""
        return f"{self.host}:{self.port},db={self.db}"

    def feast_connection_string(self, password_var: str = "REDIS_PASSWORD") -> str:
        """The connection string for ``feature_store.yaml`` with the password as ``${password_var}``, which
        Feast expands from the environment when it loads the file (the FeastHook fills it in from the
        ``feast`` connection's password), so the password is never written to the repo."""
        base = self.connection_string
        return f"{base},password=${{{password_var}}}" if self.password else base

    def data_keys(self) -> list[bytes]:
        return [k for k in self.client.scan_iter(count=1000) if k != self.OWNER_KEY.encode()]

    def flush(self) -> None:
        self.client.flushdb()
        self.client.set(self.OWNER_KEY, self.token, ex=self.lease_s)

    def release(self) -> None:
        try:
            if self.client.get(self.OWNER_KEY) in (self.token.encode(), None):
                self.client.flushdb()
        finally:
            self.client.close()


def redis_server(port: int, password: str, work_dir: Path) -> list[str]:
    """A private ``redis-server`` command line on loopback ``port`` that requires ``password`` (the
    compose ``redis`` service's ``--requirepass``). The password goes into a config file (mode 0600) in
    ``work_dir``, not onto the command line where ``ps`` shows it. No persistence."""
    work_dir.mkdir(parents=True, exist_ok=True)
    conf = work_dir / "redis.conf"
    conf.write_text(f'bind 127.0.0.1\nport {port}\nrequirepass "{password}"\nsave ""\nappendonly no\n'
                    f"dir {work_dir}\nprotected-mode yes\n")
    conf.chmod(0o600)
    return ["redis-server", str(conf)]


def redis_ping(host: str, port: int, password: str | None = None) -> bool:
    import redis

    try:
        client = redis.Redis(host=host, port=port, password=password, socket_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


# --------------------------------------------------------------------------------------------- MLflow
def mlflow_server_argv(backend_store_uri: str, artifacts_destination: str | os.PathLike[str], port: int,
                       host: str = "127.0.0.1", workers: int = 1) -> list[str]:
    """``mlflow server`` as the compose ``mlflow`` service runs it (proxied artifacts)."""
    return [venv_bin("mlflow"), "server", "--backend-store-uri", backend_store_uri,
            "--artifacts-destination", str(artifacts_destination), "--host", host, "--port", str(port),
            "--workers", str(workers)]


def wait_mlflow(url: str, service: Service, timeout_s: float = 120) -> float:
    _, waited = wait_until(lambda: (r := http_get(url + "/health")) is not None and r[0] == 200,
                           timeout_s=timeout_s, what=f"mlflow server {url}/health", services=[service])
    return waited


# --------------------------------------------------------------------------------------------- Ray
@dataclass
class RayHead:
    """How to start a Ray head with the Jobs API (dashboard) on free loopback ports and token auth."""

    temp_dir: Path
    token: str
    dashboard_port: int
    argv: list[str]
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def connection(self) -> dict[str, Any]:
        """The ``ray_default`` connection for this head (Jobs API address, token as password, this
        interpreter on the cluster so job entrypoints import gd_provider)."""
        return {"conn_type": "ray", "host": self.url, "password": self.token,
                "extra": {"python": sys.executable}}

    def jobs_api_ready(self) -> bool:
        req = urllib.request.Request(self.url + "/api/jobs/", headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status == 200
        except (OSError, ValueError):
            return False

    def _get(self, path: str) -> Any:
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=20) as resp:
            return json.loads(resp.read())

    def jobs(self) -> list[dict[str, Any]]:
        """Every job the head knows (Jobs API job info: entrypoint, runtime_env, metadata, status...)."""
        return self._get("/api/jobs/")

    def job_logs(self, submission_id: str) -> str:
        return str(self._get(f"/api/jobs/{submission_id}/logs").get("logs") or "")


def ray_head(num_cpus: int = 2, base: Mapping[str, str] | None = None, token: str | None = None) -> RayHead:
    """A ``ray start --head --block`` command line. ``--temp-dir`` is short (Unix socket paths are limited
    to ~107 bytes) and private; stop it by stopping its :class:`Service` (never ``ray stop``, which stops
    every Ray instance on the machine)."""
    import tempfile

    temp_dir = Path(tempfile.mkdtemp(prefix="gdr", dir="/tmp"))
    gcs, dash, client, agent_http, agent_grpc, env_agent, metrics = free_ports(7)
    token = token or secrets.token_hex(32)
    env = {k: v for k, v in quiet_env(base).items() if not k.startswith("RAY_AUTH")}
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
    argv = [venv_bin("ray"), "start", "--head", "--block", "--port", str(gcs), "--dashboard-port", str(dash),
            "--dashboard-host", "127.0.0.1", "--include-dashboard", "true", "--num-cpus", str(num_cpus),
            "--num-gpus", "0", "--ray-client-server-port", str(client), "--dashboard-agent-listen-port",
            str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port",
            str(env_agent), "--metrics-export-port", str(metrics), "--temp-dir", str(temp_dir),
            "--disable-usage-stats"]
    return RayHead(temp_dir=temp_dir, token=token, dashboard_port=dash, argv=argv, env=env)


# --------------------------------------------------------------------------------------------- Airflow
def link_dags(dags_folder: Path, dag_files: Iterable[Path]) -> Path:
    dags_folder.mkdir(parents=True, exist_ok=True)
    for f in dag_files:
        link = dags_folder / f.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path(f).resolve())
    return dags_folder


def airflow_environment(
    airflow_home: Path,
    *,
    dags_folder: Path,
    sql_alchemy_conn: str,
    api_port: int,
    connections: Mapping[str, Mapping[str, Any]],
    project_home: Path,
    users: Mapping[str, str] | None = None,
    base: Mapping[str, str] | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment of every Airflow process of a local stack (the compose file's ``x-airflow`` env).

    ``connections`` maps a connection id to its JSON form (``{"conn_type": …}``); ``users`` maps user →
    password for the simple auth manager, all admins (written to the passwords file). Scheduled runs are
    off (``use_job_schedule=False``): only triggered runs execute. Log-server ports are picked free so
    several stacks (or a dev Airflow) can share the machine.
    """
    users = dict(users or {"admin": secrets.token_urlsafe(12)})
    airflow_home.mkdir(parents=True, exist_ok=True)
    passwords = airflow_home / "simple_auth_manager_passwords.json"
    passwords.write_text(json.dumps(users))
    passwords.chmod(0o600)
    env = quiet_env(base)
    log_ports = [p for p in free_ports(3) if p != api_port][:2]
    env.update({
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_alchemy_conn,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:admin" for u in users),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(log_ports[0]),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(log_ports[1]),
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "GD_PROVIDER_HOME": str(project_home),
    })
    if sql_alchemy_conn.startswith("postgresql") and not has_async_postgres_driver():
        # Airflow 3 builds an async engine next to the sync one at import, deriving
        # ``postgresql+asyncpg://`` from the sync URL, and every process dies without asyncpg. Only rarely
        # used paths need it (DagRunWaiter, multi-team lookups, the task state store); until asyncpg is a
        # dependency, point that engine at an unused SQLite file so the rest runs on PostgreSQL.
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] = f"sqlite+aiosqlite:///{airflow_home / 'unused-async.db'}"
    for conn_id, conn in connections.items():
        env[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(dict(conn))
    env.update(extra or {})
    return env


def local_secrets_backend(path: Path, connections: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Write ``connections`` (conn id → JSON form) to a file read by Airflow's
    ``LocalFilesystemBackend`` and return the settings that make it the secrets backend (workers fall
    back to ``[secrets] backend``): pass them as ``airflow_environment(extra=...)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    forms = {}
    for conn_id, conn in connections.items():
        form = dict(conn)
        if isinstance(form.get("extra"), dict):
            form["extra"] = json.dumps(form["extra"])
        forms[conn_id] = form
    path.write_text(json.dumps(forms))
    path.chmod(0o600)
    return {
        "AIRFLOW__SECRETS__BACKEND": "airflow.secrets.local_filesystem.LocalFilesystemBackend",
        "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps({"connections_file_path": str(path)}),
    }


def has_async_postgres_driver() -> bool:
    """Whether Airflow's async engine can use PostgreSQL here (``asyncpg``, Airflow's default driver)."""
    import importlib.util

    return importlib.util.find_spec("asyncpg") is not None


def airflow_argv(component: str, api_port: int | None = None) -> list[str]:
    argv = [venv_bin("airflow"), component]
    if component == "api-server":
        argv += ["--host", "127.0.0.1", "--port", str(api_port), "--workers", "1"]
    return argv


def airflow_migrate(env: Mapping[str, str], log_dir: Path, timeout_s: float = 300) -> float:
    t0 = time.monotonic()
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "db-migrate.log"
    with open(log, "wb") as out:
        proc = subprocess.run([venv_bin("airflow"), "db", "migrate"], env=dict(env), stdout=out,
                              stderr=subprocess.STDOUT, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        raise StackError(f"airflow db migrate failed ({proc.returncode}):\n{log.read_text()[-4000:]}")
    return time.monotonic() - t0


class AirflowRest:
    """A small client of the Airflow 3 REST API (``/api/v2``) with a JWT from the simple auth manager."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.token: str | None = None

    def login(self, username: str, password: str) -> str:
        status, body = self._request("POST", "/auth/token", {"username": username, "password": password})
        if status not in (200, 201):
            raise StackError(f"login as {username!r} failed: {status} {body!r}")
        self.token = body["access_token"]
        return self.token

    def _request(self, method: str, path: str, payload: Any = None, timeout: float = 30) -> tuple[int, Any]:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def call(self, method: str, path: str, payload: Any = None, ok: Iterable[int] = (200, 201)) -> Any:
        status, body = self._request(method, path, payload)
        if status not in tuple(ok):
            raise StackError(f"{method} {path} → {status}: {body}")
        return body

    def get(self, path: str) -> Any:
        return self.call("GET", "/api/v2" + path)

    def patch(self, path: str, payload: Any) -> Any:
        return self.call("PATCH", "/api/v2" + path, payload)

    def post(self, path: str, payload: Any) -> Any:
        return self.call("POST", "/api/v2" + path, payload)

    def clear(self, dag_id: str, run_id: str, task_ids: Iterable[str], *, downstream: bool = True,
              only_failed: bool = False) -> list[dict[str, Any]]:
        """Clear task instances of one DAG run (as "Clear" in the UI); returns the cleared ones."""
        body = self.post(f"/dags/{dag_id}/clearTaskInstances", {
            "dag_run_id": run_id, "task_ids": list(task_ids), "include_downstream": downstream,
            "include_upstream": False, "only_failed": only_failed, "dry_run": False, "reset_dag_runs": True,
        })
        return list(body.get("task_instances") or [])

    def try_get(self, path: str) -> tuple[int, Any]:
        return self._request("GET", "/api/v2" + path)

    def health(self) -> dict[str, Any] | None:
        status, body = self._request("GET", "/api/v2/monitor/health", timeout=5)
        return body if status == 200 and isinstance(body, dict) else None

    def components_healthy(self, components: Iterable[str] = ("metadatabase", "scheduler", "triggerer",
                                                               "dag_processor")) -> bool:
        health = self.health()
        return bool(health) and all(
            (health.get(c) or {}).get("status") == "healthy" for c in components
        )
