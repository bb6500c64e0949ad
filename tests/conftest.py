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

from gd_provider.demo import airflow_env  # noqa: E402  (no Airflow import at module level)

AIRFLOW_ENV = airflow_env.configure(
    _SESSION_DIR / "airflow",
    sorted((ROOT / "dags").glob("*.py")) + sorted((ROOT / "example_dags").glob("*.py")),
    _SESSION_DIR / "home",
)
for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
    os.environ.pop(name, None)
for name in list(os.environ):
    if name.startswith("AIRFLOW_CONN_"):
        del os.environ[name]


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
