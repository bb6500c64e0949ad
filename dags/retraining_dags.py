"""One Airflow retraining DAG per config file in dags/configs/ (see gd_provider.factory).

A config that fails validation, or whose DAG fails to build, is left out here (the other DAGs still
load) and is reported as an import error by dags/retraining_config_check.py, naming the file and the
field (or the build error).
"""

from __future__ import annotations

from pathlib import Path

from gd_provider.factory import build_dags_from_folder

CONFIG_ERRORS = build_dags_from_folder(Path(__file__).resolve().parent / "configs", globals())
