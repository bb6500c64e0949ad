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
