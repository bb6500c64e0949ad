"""Where the embedded default keeps its state: one project home directory.

``GD_PROVIDER_HOME`` picks it (the demo and the tests set it); otherwise ``~/.gd_provider``.
Layout under the home::

    mlflow/mlflow.db        MLflow tracking + registry (SQLite)
    mlflow/artifacts/       MLflow artifacts
    feature_repo/           Feast repo (feature_store.yaml, definitions, data/, registry.db, online.db)
    runs/<dag>/<run>/       every output of a DAG run: one folder per task (<task>[.<map index>]/: datasets,
                            reports), ray/ (Ray Train storage, checkpoints), ray_jobs/ (Ray job requests and
                            results), report.json

The audit trail of champion changes is not a folder: it is kept as MLflow registered-model tags
(``gd.audit.NNNNNN``).
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
