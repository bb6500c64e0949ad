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
    and run again, as "Clear" on the whole run does in the UI. To rerun only some tasks of a finished run,
    use :func:`clear_tasks` and :func:`resume_run`.
    """
    dr = dag.test(logical_date=logical_date, run_conf=conf or {}, run_after=run_after)
    return run_summary(dag.dag_id, dr.run_id)


def run_summary(dag_id: str, run_id: str) -> dict[str, Any]:
    """``{"state", "run_id", "tasks": {task_id: state}, "tries": {task_id: try_number}}`` from the DB."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        fresh = session.query(DagRun).filter(DagRun.dag_id == dag_id, DagRun.run_id == run_id).one()
        tis = fresh.get_task_instances(session=session)
        return {"state": str(fresh.state), "run_id": fresh.run_id, "tasks": {ti.task_id: str(ti.state) for ti in tis},
                "tries": {ti.task_id: ti.try_number for ti in tis}}


def clear_tasks(
    dag_id: str,
    run_id: str,
    task_ids: list[str],
    *,
    include_downstream: bool = True,
    only_failed: bool = False,
    note: str | None = None,
    user: str = "admin",
) -> list[str]:
    """Clear task instances of one DAG run as the UI's *Clear* dialog does: the same endpoint function
    (``POST /api/v2/dags/{dag_id}/clearTaskInstances``, ``dry_run=false``), called in process as ``user``.

    The cleared tasks lose their state (not their try numbers) and the run is queued again; the other
    tasks keep their state and XComs. The run's conf cannot be changed this way (Airflow 3.3 has no such
    field on the clear or patch-run bodies). Returns the cleared task ids, sorted.
    """
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.api_fastapi.core_api.datamodels.task_instances import ClearTaskInstancesBody
    from airflow.api_fastapi.core_api.routes.public.task_instances import post_clear_task_instances
    from airflow.models.dagbag import DBDagBag
    from airflow.utils.session import create_session

    body = ClearTaskInstancesBody(
        dry_run=False, dag_run_id=run_id, task_ids=list(task_ids), include_downstream=include_downstream,
        only_failed=only_failed, note=note,
    )
    with create_session() as session:
        response = post_clear_task_instances(
            dag_id=dag_id, dag_bag=DBDagBag(), body=body, session=session,
            user=SimpleAuthManagerUser(username=user, role="admin"),
        )
        return sorted(ti.task_id for ti in response.task_instances)


def run_dag_callback(dag: Any, request: Any) -> None:
    """Run a DAG run's success/failure callbacks as Airflow's DAG processor does for the scheduler's
    ``DagCallbackRequest``: the request goes through its JSON form (as the scheduler stores it for the
    processor), then ``_execute_dag_callbacks`` calls the callbacks of ``dag`` - the DAG as parsed from
    its file, with its callables - with the context built from the request. A callback that raises is
    logged, as there, and does not fail the run."""
    import structlog
    from airflow.callbacks.callback_requests import DagCallbackRequest
    from airflow.dag_processing.processor import _execute_dag_callbacks

    request = DagCallbackRequest.model_validate_json(request.to_json())
    bag = type("_ParsedDags", (), {"dags": {dag.dag_id: dag}})()  # the processor's DagBag, for this DAG
    _execute_dag_callbacks(bag, request, structlog.get_logger("airflow.dag_processing.callbacks"))


def resume_run(dag: Any, run_id: str, *, max_seconds: float = 3600) -> dict[str, Any]:
    """Run a queued (e.g. just cleared) DAG run to the end without a scheduler.

    What the scheduler would do: start the run, then schedule and run the task instances whose
    dependencies are met, one at a time, with the task runner ``dag.test()`` uses. Only cleared task
    instances run again (their try number goes up); finished ones are left alone. When the run ends, its
    DAG-level callbacks (``on_success_callback``/``on_failure_callback``) run as the scheduler hands them
    over (:func:`run_dag_callback`). Returns :func:`run_summary`.
    """
    import time

    from airflow.models.dagbag import DBDagBag
    from airflow.models.dagrun import DagRun
    from airflow.sdk.definitions.dag import _run_task
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState

    deadline = time.monotonic() + max_seconds
    with create_session() as session:
        dr = session.query(DagRun).filter(DagRun.dag_id == dag.dag_id, DagRun.run_id == run_id).one()
        if dr.state != DagRunState.QUEUED:
            raise RuntimeError(f"DAG run {run_id} is {dr.state}, not queued: clear some of its tasks first")
        serialized = dr.dag = DBDagBag().get_dag_for_run(dr, session=session)
        dr.set_state(DagRunState.RUNNING)
        session.commit()
        while dr.state == DagRunState.RUNNING:
            if time.monotonic() > deadline:
                raise TimeoutError(f"DAG run {run_id} still running after {max_seconds} s")
            session.expire_all()
            # the task runner may have detached it (its own use of the scoped session): fetch it again
            dr = session.query(DagRun).filter(DagRun.dag_id == dag.dag_id, DagRun.run_id == run_id).one()
            dr.dag = serialized
            # as the scheduler: the run's DAG callbacks come back as a request, never run here on the
            # serialized DAG (which has no callables); the DAG processor runs them on the parsed DAG
            schedulable, callback = dr.update_state(session=session, execute_callbacks=False)
            if callback is not None:
                session.commit()
                run_dag_callback(dag, callback)
            for ti in schedulable:
                if ti.state != TaskInstanceState.UP_FOR_RESCHEDULE:
                    ti.try_number += 1
                ti.state = TaskInstanceState.SCHEDULED
            session.commit()
            scheduled = [ti for ti in dr.get_task_instances(session=session) if ti.state == TaskInstanceState.SCHEDULED]
            if not scheduled and dr.state == DagRunState.RUNNING:
                time.sleep(1)
            for ti in scheduled:
                try:
                    _run_task(ti=ti, task=dag.task_dict[ti.task_id], run_triggerer=True)
                except Exception:  # the task's state says what happened; keep going like dag.test()
                    import logging

                    logging.getLogger(__name__).exception("task %s failed", ti.task_id)
    return run_summary(dag.dag_id, run_id)
