"""The docker-compose stack, checked without a Docker engine (none runs on our machines).

The file is interpolated like Compose does (``${VAR:-default}``, ``$$``), validated against the Compose
JSON schema (``tests/fixtures/compose_spec.json``, from docker-compose 1.29.2, Apache-2.0), and checked
for what the stack needs. Where a ``docker compose`` CLI exists, ``docker compose config`` runs too.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yaml"


def _interpolate(text: str, *, markers: bool = False) -> str:
    """Compose-style interpolation; with ``markers`` every ``${VAR...}`` becomes ``<VAR>`` (names, not defaults)."""
    text = re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}",
                  lambda m: f"<{m.group(1)}>" if markers else (m.group(2) or ""), text)
    return text.replace("$$", "$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(_interpolate(COMPOSE.read_text()))


def test_valid_against_the_compose_schema(compose):
    schema = json.loads((ROOT / "tests" / "fixtures" / "compose_spec.json").read_text())
    doc = {k: v for k, v in compose.items() if not k.startswith("x-")}
    jsonschema.Draft201909Validator(schema).validate(doc)


def test_services_and_dependencies(compose):
    services = compose["services"]
    for name in ("postgres", "redis", "mlflow", "ray-head", "ray-worker", "ray-worker-gpu", "airflow-init",
                 "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
        assert name in services, name
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
        if name not in ("ray-worker", "ray-worker-gpu", "airflow-init"):
            assert "healthcheck" in svc, f"{name} has no healthcheck"
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            assert src.startswith(".") or src in compose["volumes"], f"{name}: unknown volume {src}"
            if src.startswith("."):
                assert (ROOT / src).exists(), f"{name} mounts missing {src}"


def test_ray_has_shm_and_a_gpu_worker_with_cpu_fallback(compose):
    services = compose["services"]
    for name in ("ray-head", "ray-worker", "ray-worker-gpu"):
        assert services[name]["shm_size"] == "2gb"
    gpu = services["ray-worker-gpu"]
    assert gpu["profiles"] == ["gpu"], "the GPU worker is opt-in so CPU-only hosts still start the stack"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "profiles" not in services["ray-worker"]


def test_airflow_services_share_connections_and_data(compose):
    services = compose["services"]
    airflow = [s for n, s in services.items() if n.startswith("airflow-")]
    for svc in airflow:
        env = svc["environment"]
        for conn, conn_type in [("MLFLOW", "mlflow"), ("FEAST", "feast"), ("RAY", "ray")]:
            assert json.loads(env[f"AIRFLOW_CONN_{conn}_DEFAULT"])["conn_type"] == conn_type
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
        assert "gd-data:/data" in svc["volumes"]
    # the Redis password reaches tasks through the feast connection (masked), not as a plain variable; compare
    # the variable names (defaults would hide a misspelt one), not the interpolated defaults
    refs = yaml.safe_load(_interpolate(COMPOSE.read_text(), markers=True))["services"]
    assert refs["redis"]["environment"]["REDIS_PASSWORD"] == "<REDIS_PASSWORD>"
    assert refs["redis"]["command"][refs["redis"]["command"].index("--requirepass") + 1] == "<REDIS_PASSWORD>"
    for name in (n for n in refs if n.startswith("airflow-")):
        assert json.loads(refs[name]["environment"]["AIRFLOW_CONN_FEAST_DEFAULT"])["password"] == "<REDIS_PASSWORD>"
    assert [n for n, s in services.items() if "REDIS_PASSWORD" in (s.get("environment") or {})] == [
        "redis", "airflow-init"]
    assert "gd-data:/data" in services["mlflow"]["volumes"]


_SECRET_NAME = re.compile(r"pass(word|wd)?|secret|token|api[_-]?key|credential", re.IGNORECASE)
_ENV_REF = re.compile(r"\$\{\w+(:?-[^}]*)?\}")  # a whole value taken from the environment
_URL_PASSWORD = re.compile(r"://[^/\s:@]+:([^@\s]+)@")  # scheme://user:PASSWORD@host
_SECRET_FLAG = re.compile(r"^--?[\w-]*(pass|secret|token)[\w-]*$", re.IGNORECASE)


def _secret_problems(text: str) -> list[str]:
    """Literal secrets in the raw (uninterpolated) compose text: every secret-named key, connection-JSON
    field, URL password and secret command-line flag must take its value from a ``${VAR}`` reference."""
    problems: list[str] = []

    def check_value(where: str, value: str) -> None:
        if not _ENV_REF.fullmatch(value.strip()):
            problems.append(f"{where}: literal {value!r}")

    def check_string(where: str, key: str, value: str) -> None:
        if _SECRET_NAME.search(key):
            check_value(where, value)
        for m in _URL_PASSWORD.finditer(value):
            check_value(f"{where} (URL password)", m.group(1))
        if key.upper().startswith("AIRFLOW_CONN_") and value.lstrip().startswith("{"):
            walk(json.loads(value), f"{where} (connection JSON)")

    def walk(node, where: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(v, str):
                    check_string(f"{where}.{k}", str(k), v)
                else:
                    walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, item in enumerate(node):
                if isinstance(item, str):
                    check_string(f"{where}[{i}]", "", item)
                    prev = node[i - 1] if i else None
                    if isinstance(prev, str) and _SECRET_FLAG.match(prev):
                        check_value(f"{where}[{i}] (after {prev})", item)
                else:
                    walk(item, f"{where}[{i}]")

    walk(yaml.safe_load(text), "")
    return problems


def test_no_literal_secrets_in_the_file():
    text = COMPOSE.read_text()
    assert _secret_problems(text) == []
    assert re.search(r"postgresql\+psycopg2://airflow:\$\{POSTGRES_PASSWORD", text)


@pytest.mark.parametrize(("old", "new"), [
    ("${AIRFLOW_JWT_SECRET:-change-me-in-production}", "change-me-in-production"),  # AIRFLOW__API_AUTH__JWT_SECRET
    ('"password": "${REDIS_PASSWORD:-redis}"', '"password": "redis"'),  # inside AIRFLOW_CONN_FEAST_DEFAULT
    ('"password": "${RAY_AUTH_TOKEN:-change-me-ray-token}"', '"PASSWORD": "tok"'),
    ("airflow:${POSTGRES_PASSWORD:-airflow}@postgres:5432/airflow", "airflow:airflow@postgres:5432/airflow"),
    ("POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:-airflow}", "postgres_password: airflow"),
    ('"--requirepass", "${REDIS_PASSWORD:-redis}"', '"--requirepass", "redis"'),
])
def test_the_secret_check_catches_literals(old, new):
    text = COMPOSE.read_text()
    assert old in text
    assert _secret_problems(text.replace(old, new, 1)) != []


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker CLI")
def test_docker_compose_config_when_available():
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("docker CLI has no compose plugin here")
    out = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


AIRFLOW_SERVICES = ("airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer")


@pytest.mark.parametrize("service", AIRFLOW_SERVICES)
def test_compose_connections_parse_into_the_hooks_configs(compose, service, monkeypatch):
    """The stack's ``AIRFLOW_CONN_*`` values, as Airflow reads them, give the hooks the stack's services."""
    from gd_provider.hooks.feast import FeastHook
    from gd_provider.hooks.mlflow import MlflowHook
    from gd_provider.hooks.ray import RayHook

    services = compose["services"]
    env = services[service]["environment"]
    for name, value in env.items():
        if name.startswith("AIRFLOW_CONN_") or name == "GD_PROVIDER_HOME":
            monkeypatch.setenv(name, str(value))

    mlflow = MlflowHook().get_config()
    conn = json.loads(env["AIRFLOW_CONN_MLFLOW_DEFAULT"])
    assert conn["host"] in services, f"mlflow connection host {conn['host']!r} is not a compose service"
    mlflow_cmd = services[conn["host"]]["command"]
    assert mlflow.tracking_uri == f"http://{conn['host']}:{mlflow_cmd[mlflow_cmd.index('--port') + 1]}"
    assert mlflow.registry_uri in (None, mlflow.tracking_uri) and mlflow.token is None
    assert mlflow.ui_url == "http://localhost:5000"  # the published port, for links opened in a browser

    repo = FeastHook().repo_path()
    assert repo == Path("/data/feature_repo")
    assert repo.is_relative_to(env["GD_PROVIDER_HOME"]), "the Feast repo lives on the shared data volume"

    ray = RayHook()
    ray_conn = json.loads(env["AIRFLOW_CONN_RAY_DEFAULT"])
    if ray_conn.get("host", "local") == "local":
        assert ray.address() == "local"
    else:  # a cluster: the Jobs API of the compose ray-head service
        address = ray.address()
        assert address.startswith("http://ray-head:"), address
        assert "ray-head" in services


def test_postgres_async_driver_is_installed():
    """Airflow 3 opens an async engine next to the sync one (``postgresql+asyncpg://`` derived from
    ``sql_alchemy_conn``) in every process: without asyncpg, `airflow db migrate` and every component of
    the stack die at import on PostgreSQL. So asyncpg is a dependency of the package."""
    import importlib.util
    from importlib.metadata import requires

    assert importlib.util.find_spec("asyncpg") is not None
    assert any(r.startswith("asyncpg") for r in requires("gd-provider") or [])
