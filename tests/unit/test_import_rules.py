"""The layering rules (issue 15), checked on the source of every module (module-level and lazy imports alike):

* the plain core (``gd_provider.core``) imports neither Airflow nor the demo, the hooks, the operators, the
  sensors, the triggers, the factory or the other Airflow-facing modules: it runs on Ray workers and alone;
* nothing in the package imports the test harness (``tests``), which is not in the wheel;
* the demo's domain (``gd_provider.demo``) does not import the Airflow-facing layers either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "gd_provider"
AIRFLOW_FACING = ("gd_provider.hooks", "gd_provider.operators", "gd_provider.sensors", "gd_provider.triggers",
                  "gd_provider.factory", "gd_provider.dag_factory", "gd_provider.config_dags", "gd_provider.links",
                  "gd_provider.notifications", "gd_provider.get_provider_info")


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _violations(folder: Path, banned: tuple[str, ...]) -> list[str]:
    out = []
    for path in sorted(folder.rglob("*.py")):
        for line, name in _imports(path):
            if any(name == b or name.startswith(b + ".") for b in banned):
                out.append(f"{path.relative_to(folder.parent)}:{line} imports {name}")
    return out


def test_the_core_imports_no_airflow_no_demo_and_no_airflow_facing_layer():
    assert _violations(SRC / "core", ("airflow", "gd_provider.demo", *AIRFLOW_FACING)) == []


def test_the_demo_domain_imports_no_airflow_facing_layer():
    assert _violations(SRC / "demo", AIRFLOW_FACING) == []


def test_nothing_in_the_package_imports_the_test_harness():
    assert _violations(SRC, ("tests",)) == []


@pytest.mark.parametrize("banned", ["airflow", "gd_provider.operators"])
def test_the_rule_sees_a_lazy_import(tmp_path, banned):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text(f"def f():\n    import {banned}.x\n    from {banned} import y\n")
    assert _violations(pkg, (banned,)) == [f"pkg/m.py:2 imports {banned}.x", f"pkg/m.py:3 imports {banned}"]


def test_every_operator_and_sensor_templates_its_connection_ids():
    """Provider style: a connection id can come from a Param or a Variable (``{{ var.value.mlflow_conn }}``)."""
    import inspect

    from gd_provider.operators import approval, drift, features, gate, health, registry, training, validation
    from gd_provider.sensors import features as sensor_features
    from gd_provider.sensors import registry as sensor_registry

    checked = 0
    for module in (approval, drift, features, gate, health, registry, training, validation, sensor_features,
                   sensor_registry):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__ or not hasattr(cls, "template_fields"):
                continue
            conn_args = [p for p in inspect.signature(cls.__init__).parameters if p.endswith("_conn_id")]
            missing = [p for p in conn_args if p not in cls.template_fields]
            assert not missing, f"{cls.__name__}: {missing} not templated"
            checked += bool(conn_args)
    assert checked >= 10
