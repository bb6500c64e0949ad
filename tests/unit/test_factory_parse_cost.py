"""Parsing the DAG files stays cheap: no Great Expectations (≈5 s to import) at parse time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("great_expectations",)

PARSE = """
import runpy, sys
runpy.run_path(sys.argv[1], run_name="dag_file")
print("IMPORTED:" + ",".join(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.mark.parametrize(
    "dag_file",
    sorted((ROOT / "example_dags").glob("*.py")) + [ROOT / "dags" / "retraining_dags.py",
                                                      ROOT / "dags" / "retraining_config_check.py"],
    ids=lambda p: p.name,
)
def test_parsing_does_not_import_great_expectations(dag_file, tmp_path):
    env = {"AIRFLOW_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    out = subprocess.run([sys.executable, "-c", PARSE.format(heavy=HEAVY), str(dag_file)], capture_output=True,
                         text=True, timeout=300, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    [imported] = [line for line in out.stdout.splitlines() if line.startswith("IMPORTED:")]
    assert imported == "IMPORTED:", f"parsing {dag_file.name} imports {imported.removeprefix('IMPORTED:')}"
