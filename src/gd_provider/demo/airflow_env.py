"""Run our DAGs on the embedded default without a scheduler: a private ``AIRFLOW_HOME`` on SQLite,
a DAGs folder of links to the DAG files, ``airflow db migrate``, then ``dag.test()`` per run.

Used by ``make demo`` and by the DAG tests. ``configure()`` must run before Airflow is imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any


def configure(airflow_home: Path, dag_files: list[Path], project_home: Path) -> dict[str, str]:
    """Point this process (and its children) at a private Airflow home whose DAGs folder links
    ``dag_files``. Returns the environment variables it set, for printing "how to open the UI"."""
    airflow_home.mkdir(parents=True, exist_ok=True)
    dags = airflow_home / "dags"
    dags.mkdir(exist_ok=True)
    for f in dags.iterdir():
        if f.is_symlink():
            f.unlink()
    for f in dag_files:
        (dags / f.name).symlink_to(f.resolve())
    env = {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "GD_PROVIDER_HOME": str(project_home),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "RAY_USAGE_STATS_ENABLED": "0",
        "GX_ANALYTICS_ENABLED": "false",
        "FEAST_USAGE": "False",
    }
    os.environ.update(env)
    return env


def migrate() -> None:
    airflow = Path(sys.executable).with_name("airflow")
    proc = subprocess.run([str(airflow), "db", "migrate"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def load_dag(dag_id: str) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    if dag_id not in bag.dags:
        raise KeyError(f"no DAG {dag_id!r} in {sorted(bag.dags)}")
    return bag.dags[dag_id]


def run_dag(
    dag: Any, logical_date: datetime, conf: dict[str, Any] | None = None, *, run_after: datetime | None = None
) -> dict[str, Any]:
    """One ``dag.test()`` run. Returns ``{"state", "run_id", "tasks": {task_id: state}}``.

    The run id derives from ``run_after`` (default: now). Passing the ``run_after`` of an earlier run of
    the same logical date reruns that DAG run from scratch under the same run id — every task cleared
    and run again, as "Clear" on the whole run does in the UI.
    """
    from airflow.utils.session import create_session

    dr = dag.test(logical_date=logical_date, run_conf=conf or {}, run_after=run_after)
    with create_session() as session:
        from airflow.models.dagrun import DagRun

        fresh = session.query(DagRun).filter(DagRun.dag_id == dag.dag_id, DagRun.run_id == dr.run_id).one()
        tasks = {ti.task_id: str(ti.state) for ti in fresh.get_task_instances(session=session)}
        return {"state": str(fresh.state), "run_id": fresh.run_id, "tasks": tasks}
