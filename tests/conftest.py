"""Test-wide environment: a private Airflow home on SQLite and a private project home per test.

Airflow reads its configuration when first imported, so the environment is set here, before any test
module imports Airflow.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="gd_tests_"))

from tests.harness import airflow_env  # noqa: E402  (no Airflow import at module level)

AIRFLOW_ENV = airflow_env.configure(
    _SESSION_DIR / "airflow",
    sorted((ROOT / "dags").glob("*.py")) + sorted((ROOT / "example_dags").glob("*.py")),
    _SESSION_DIR / "home",
)


def _stop_on_sigterm() -> None:
    """A session stopped by SIGTERM (``timeout``, a closed terminal, a CI cancel) ends like Ctrl-C: pytest runs
    the fixtures' teardown, which stops the servers they started; ``tests/reaper.py`` kills whatever is left
    (also after SIGKILL, or once Ray's own SIGTERM handler replaced this one)."""
    import signal
    import subprocess
    import sys

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, interrupt)
    if not os.environ.get("GD_TEST_REAPER"):
        os.environ["GD_TEST_REAPER"] = str(os.getpid())  # one per session (not per xdist worker or subprocess)
        subprocess.Popen([sys.executable, str(ROOT / "tests" / "reaper.py"), str(os.getpid())],
                         stdin=subprocess.DEVNULL, start_new_session=True)


_stop_on_sigterm()
for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
    os.environ.pop(name, None)
for name in list(os.environ):
    if name.startswith("AIRFLOW_CONN_"):
        del os.environ[name]


@pytest.fixture(autouse=True)
def _isolated_mlflow_uris():
    """MLflow keeps its tracking/registry URIs per process: never let one test's store leak into the next."""
    yield
    if "mlflow" in __import__("sys").modules:
        import mlflow

        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


@pytest.fixture
def gd_home(tmp_path, monkeypatch) -> Path:
    """A fresh project home for one test."""
    home = tmp_path / "gd_home"
    home.mkdir()
    monkeypatch.setenv("GD_PROVIDER_HOME", str(home))
    return home


@pytest.fixture
def mlflow_config(gd_home):
    """The embedded MLflow store of ``gd_home`` as the core sees it."""
    from gd_provider.core.registry import MlflowConfig

    root = gd_home / "mlflow"
    (root / "artifacts").mkdir(parents=True)
    return MlflowConfig(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", artifact_root=str(root / "artifacts"))


@pytest.fixture(scope="session")
def airflow_db() -> dict[str, str]:
    """A migrated Airflow metadata DB (SQLite) for DAG tests."""
    airflow_env.migrate()
    return AIRFLOW_ENV


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server():
    """A real ``mlflow server`` process (SQLite backend, proxied artifacts) over HTTP on loopback."""
    import subprocess
    import sys
    import time
    import urllib.request

    root = _SESSION_DIR / "mlflow_server"
    root.mkdir()
    port = _free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen(
        [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        # the whole tree (the server's uvicorn/gunicorn workers too), not only its leader
        import signal

        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        log.close()


@pytest.fixture(params=["sqlite", "http"])
def mlflow_backend(request, gd_home):
    """The embedded SQLite store, then a real MLflow server over HTTP: registry tests run on both."""
    from gd_provider.core.registry import MlflowConfig

    if request.param == "sqlite":
        root = gd_home / "mlflow"
        (root / "artifacts").mkdir(parents=True)
        return MlflowConfig(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", artifact_root=str(root / "artifacts"))
    return MlflowConfig(tracking_uri=request.getfixturevalue("mlflow_server"))


@pytest.fixture
def mlflow_conn(mlflow_backend, monkeypatch):
    """``mlflow_backend`` reached the way operators reach it: the embedded default for SQLite, an
    ``mlflow_default`` connection to the real server for HTTP."""
    import json

    if mlflow_backend.tracking_uri.startswith("http"):
        host, port = mlflow_backend.tracking_uri.removeprefix("http://").split(":")
        monkeypatch.setenv(
            "AIRFLOW_CONN_MLFLOW_DEFAULT",
            json.dumps({"conn_type": "mlflow", "host": host, "port": int(port), "schema": "http"}),
        )
    return mlflow_backend
