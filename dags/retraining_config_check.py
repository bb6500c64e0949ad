"""Surfaces broken retraining configs as an Airflow import error (this file builds no DAG).

Airflow records import errors per DAG file, and one loader file that raised would hide every good
DAG with the bad one. So dags/retraining_dags.py builds the valid configs, and this file raises for the
invalid ones: the UI's "DAG Import Errors" then names the config file and each bad field.
"""

from __future__ import annotations

from pathlib import Path

from gd_provider.dag_factory import ConfigError, load_config

_errors = []
for _path in sorted((Path(__file__).resolve().parent / "configs").glob("*.y*ml")):
    try:
        load_config(_path)
    except ConfigError as _exc:
        _errors.append(str(_exc))
if _errors:
    raise ConfigError("invalid retraining config(s):\n" + "\n".join(_errors))
