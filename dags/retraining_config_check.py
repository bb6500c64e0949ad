"""Surfaces broken retraining configs as an Airflow import error (this file builds no DAG).

Airflow records import errors per DAG file, and one loader file that raised would hide every good
DAG with the bad one. So dags/retraining_dags.py builds the valid configs, and this file raises for the
others: it builds (and discards) every config's DAG as the loader does, so the UI's "DAG Import Errors"
names each config file and its bad field, or the error that stopped its DAG from being built.
"""

from __future__ import annotations

from pathlib import Path

from gd_provider.factory import raise_config_errors

raise_config_errors(Path(__file__).resolve().parent / "configs")
