"""Where the embedded default keeps its state: one project home directory.

``GD_PROVIDER_HOME`` picks it (the demo and the tests set it); otherwise ``~/.gd_provider``.
Layout under the home::

    mlflow/mlflow.db        MLflow tracking + registry (SQLite)
    mlflow/artifacts/       MLflow artifacts
    feature_repo/           Feast repo (feature_store.yaml, definitions, data/, registry.db, online.db)
    datasets/<dag>/<run>/   training datasets written by the retrieval task
    ray/                    Ray Train storage (checkpoints)
    audit/                  append-only audit trail of champion changes
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "GD_PROVIDER_HOME"


def project_home() -> Path:
    raw = os.environ.get(HOME_ENV)
    home = Path(raw).expanduser() if raw else Path.home() / ".gd_provider"
    return home.resolve()


def subdir(*parts: str, create: bool = True) -> Path:
    path = project_home().joinpath(*parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path
