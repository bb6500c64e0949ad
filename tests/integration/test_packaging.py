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


def test_the_wheel_holds_the_provider_not_the_test_harness(tmp_path):
    """The process harness (tests/harness: in-process DAG runs, the stack's services) is the repository's,
    not the package's: a built wheel has the provider, the core, the demo's domain and py.typed only."""
    import zipfile

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(root)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    [wheel] = tmp_path.glob("gd_provider-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "gd_provider/py.typed" in names and "gd_provider/core/gates/base.py" in names
    assert "gd_provider/demo/generator.py" in names  # the demo's domain stays
    leaked = [n for n in names if n.startswith("tests/") or n.endswith(("stack.py", "airflow_env.py"))]
    assert not leaked, leaked
