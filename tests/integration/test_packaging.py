"""The installed package is an Airflow provider with our three connection types."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _airflow(*args: str) -> str:
    airflow = Path(sys.executable).with_name("airflow")
    out = subprocess.run([str(airflow), *args], capture_output=True, text=True, env=os.environ, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_airflow_lists_the_provider_and_its_connection_types():
    providers = _airflow("providers", "list", "--output", "plain")
    assert "gd-provider" in providers
    hooks = _airflow("providers", "hooks", "--output", "plain")
    for conn_type, hook in [("feast", "FeastHook"), ("mlflow", "MlflowHook"), ("ray", "RayHook")]:
        line = next((ln for ln in hooks.splitlines() if ln.split() and ln.split()[0] == conn_type), "")
        assert f"gd_provider.hooks.{conn_type}.{hook}" in line, hooks
