"""What of the task's environment Ray's processes may see.

A task process holds every secret of its deployment in its environment: Airflow's connections and
variables (``AIRFLOW_CONN_*``, ``AIRFLOW_VAR_*``), its configuration (``AIRFLOW__*``: the metadata DB's URI,
the Fernet key, the API's JWT secret) and the MLflow credentials this package sets for the task's own MLflow
calls. Training on Ray needs none of them: the workers read the dataset files and write checkpoints, the
task itself talks to MLflow and Airflow. The local Ray instance (``init_local_ray``) is started without
them, so no raylet, worker or Ray Train worker process inherits them; a Ray job's ``runtime_env`` keeps only
the variables that are not theirs (``job_env_vars``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

#: Name prefixes of variables Ray's processes never get: Airflow's connections, variables, configuration.
HIDDEN_PREFIXES = ("AIRFLOW_CONN_", "AIRFLOW_VAR_", "AIRFLOW__", "_AIRFLOW_")
#: Single variables Ray's processes never get: MLflow's credentials (the task, not the workers, talks to
#: MLflow) and the Feast hook's online-store password variable.
HIDDEN_NAMES = frozenset({"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                          "REDIS_PASSWORD"})


def is_hidden(name: str) -> bool:
    """Whether the variable ``name`` is kept from Ray's processes."""
    return name in HIDDEN_NAMES or name.upper().startswith(HIDDEN_PREFIXES)


def hidden_names(environ: Iterable[str] | None = None) -> list[str]:
    """The variables of ``environ`` (default: this process's) that Ray's processes must not inherit."""
    return sorted(name for name in (os.environ if environ is None else environ) if is_hidden(name))


def job_env_vars(env_vars: Mapping[str, object]) -> dict[str, str]:
    """``env_vars`` of a Ray job's ``runtime_env`` without the variables that are not the job's (see
    ``is_hidden``): what the Jobs API path sends to the cluster."""
    return {str(k): str(v) for k, v in env_vars.items() if not is_hidden(str(k))}
