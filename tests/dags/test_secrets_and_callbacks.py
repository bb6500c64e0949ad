"""Secrets planted in every connection (passwords, extras, user info of URIs), a variable and Airflow's own
configuration never leave the task: the shipped nightly DAG runs one night against a real ``mlflow server``
whose ``mlflow_default`` tracking URI carries ``user:password@``, training on the local Ray; then the task
output (stdout/stderr and log records), XCom, rendered fields and everything else in Airflow's DB, the MLflow
server's store (runs' params/tags/metrics, registry) and artifacts, the run's files, and the environment of
every Ray process seen during the run (raylet, workers, the ``RayTrainWorker`` actors) are searched for
each secret. MLflow's "View run at" lines are printed, with the URI stripped of its user info.

And a cleared run resumed in process (``airflow_env.resume_run``) hands its DAG-level callbacks over as the
scheduler does: the shipped DAG's "run failed" alert fires at the end of a rerun that fails (it raised
``'SerializedDAG' object has no attribute 'on_failure_callback'`` before)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import psutil
import pytest

from tests.harness import airflow_env

from .conftest import materialize, night

pytestmark = pytest.mark.dags
DAG_ID = "gd_nightly_fraud_retraining"
QUICK = {"training_overrides": {"epochs": 1, "num_workers": 1, "cpus_per_worker": 1.0}}
SECRETS = {
    "mlflow_uri_password": "mlf-uri-pw-7c1d0e",
    "feast_password": "feast-pw-2b9a44",
    "ray_password": "ray-token-5e8f13",
    "ray_extra": "ray-extra-secret-9d02ab",
    "other_password": "other-db-pw-31c7f5",
    "other_extra": "other-extra-key-6a4e90",
    "other_uri_password": "other-uri-pw-84b2d1",
    "variable": "variable-secret-0f5c2e",
    "airflow_config": "smtp-pw-c3a9b7",
}


class _RayEnvWatcher(threading.Thread):
    """Reads the environment of every Ray process below this one while the DAG runs."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.seen: dict[int, tuple[str, dict[str, str]]] = {}

    def run(self) -> None:
        me = psutil.Process()
        while not self.stop.wait(0.2):
            for proc in me.children(recursive=True):
                try:
                    cmd = " ".join(proc.cmdline()[:2])
                    if "ray" in cmd and (proc.pid not in self.seen or cmd != self.seen[proc.pid][0]):
                        self.seen[proc.pid] = (cmd, proc.environ())
                except (psutil.Error, OSError):
                    continue


def _planted(monkeypatch, demo_home: Path, mlflow_server: str) -> None:
    def conn(conn_id: str, **fields) -> None:
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))

    host_port = mlflow_server.removeprefix("http://")
    conn("mlflow_default", conn_type="mlflow",
         extra={"tracking_uri": f"http://gd-user:{SECRETS['mlflow_uri_password']}@{host_port}"})
    conn("feast_default", conn_type="feast", password=SECRETS["feast_password"],
         extra={"repo_path": str(demo_home / "feature_repo")})
    conn("ray_default", conn_type="ray", host="local", password=SECRETS["ray_password"],
         extra={"runtime_env": {"env_vars": {"S3_SECRET_ACCESS_KEY": SECRETS["ray_extra"]}}})
    conn("other_db", conn_type="postgres", host="db", login="app", password=SECRETS["other_password"],
         extra={"api_key": SECRETS["other_extra"],
                "replica": f"postgresql://app:{SECRETS['other_uri_password']}@replica/app"})
    monkeypatch.setenv("AIRFLOW_VAR_SOME_SECRET", SECRETS["variable"])
    monkeypatch.setenv("AIRFLOW__SMTP__SMTP_PASSWORD", SECRETS["airflow_config"])


def _leaks(text: str) -> list[str]:
    return [name for name, secret in SECRETS.items() if secret in text]


def _file_leaks(root: Path) -> dict[str, list[str]]:
    found = {}
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits = [name for name, secret in SECRETS.items() if secret.encode() in data]
            if hits:
                found[str(path)] = hits
    return found


def test_no_secret_of_any_connection_leaves_the_task(demo_home, mlflow_server, monkeypatch, capfd, caplog):
    import logging

    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    from gd_provider.demo.pipeline import MODEL_NAME
    from gd_provider.hooks.mlflow import MlflowHook

    caplog.set_level(logging.INFO)
    materialize(night(1))
    _planted(monkeypatch, demo_home, mlflow_server)
    watcher = _RayEnvWatcher()
    watcher.start()
    try:
        run = airflow_env.run_dag(airflow_env.load_dag(DAG_ID), night(1), QUICK)
    finally:
        watcher.stop.set()
        watcher.join(5)
    out, err = capfd.readouterr()
    assert run["tasks"]["train"] == "success" and run["tasks"]["register"] == "success", (run, out[-6000:])

    found: dict[str, object] = {}  # where each secret was found: all places are searched, then reported

    # task output: MLflow printed its links, with the server's URI stripped of its user info
    view_lines = [line for line in out.splitlines() if "View run" in line]
    assert view_lines, out[-3000:]
    found["View run lines with user info"] = [line for line in view_lines
                                              if f"at: {mlflow_server}/#/experiments/" not in line]
    found["task output"] = _leaks(out + err) + _leaks(caplog.text)

    # Airflow: XCom, rendered fields, and every other table of its DB and its log files
    with create_session() as session:
        xcoms = session.query(XComModel).filter(XComModel.dag_id == DAG_ID, XComModel.run_id == run["run_id"]).all()
        rendered = session.query(RenderedTaskInstanceFields).filter(
            RenderedTaskInstanceFields.dag_id == DAG_ID, RenderedTaskInstanceFields.run_id == run["run_id"]).all()
        assert xcoms
        found["XCom"] = _leaks(json.dumps([x.value for x in xcoms], default=str))
        found["rendered fields"] = _leaks(json.dumps([r.rendered_fields for r in rendered], default=str))
    airflow_home = Path(os.environ["AIRFLOW_HOME"])
    found["Airflow home"] = _file_leaks(airflow_home)

    # MLflow: the runs' params, tags and metrics, the registry, and the server's store and artifacts
    client = MlflowHook().get_conn()
    exp = client.get_experiment_by_name(MODEL_NAME)
    runs = client.search_runs([exp.experiment_id])
    assert runs
    found["MLflow runs"] = _leaks(json.dumps([r.to_dictionary() for r in runs], default=str))
    versions = client.search_model_versions(f"name = '{MODEL_NAME}'")
    found["MLflow registry"] = _leaks(json.dumps(
        [dict(v.tags) for v in versions] + [dict(client.get_registered_model(MODEL_NAME).tags)], default=str))
    found["MLflow server files"] = _file_leaks(Path(airflow_home).parent / "mlflow_server")

    # the project home: run files, reports, checkpoints, the Feast repo
    found["project home"] = _file_leaks(demo_home)

    # every Ray process, the training workers among them, started without any of the task's secrets
    names = [cmd for cmd, _ in watcher.seen.values()]
    assert any("RayTrainWorker" in cmd for cmd in names), names
    found["Ray processes' environment"] = {
        cmd: _leaks(json.dumps(env)) + sorted(k for k in env if k.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_",
                                                                              "AIRFLOW__")))
        for cmd, env in watcher.seen.values()
        if _leaks(json.dumps(env)) or any(k.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_", "AIRFLOW__")) for k in env)}
    assert {where: what for where, what in found.items() if what} == {}


def _alerts(capfd, caplog) -> list[dict]:
    """The GD-ALERT payloads logged since the last call, each once: Airflow's logging sends them to stdout,
    stderr or the log records, depending on what configured logging first in this process."""
    decoder, prefix, found = json.JSONDecoder(), "GD-ALERT {", {}
    out, err = capfd.readouterr()
    for line in (out + err + caplog.text).splitlines():
        if prefix in line:
            payload = decoder.raw_decode(line[line.index(prefix) + len(prefix) - 1:])[0]
            found[json.dumps(payload, sort_keys=True)] = payload
    caplog.clear()
    return list(found.values())


def test_a_resumed_run_that_fails_raises_the_dags_run_failed_alert(demo_home, capfd, caplog):
    dag = airflow_env.load_dag(DAG_ID)
    assert dag.on_failure_callback  # the shipped DAG's DAG-level alert ("run failed")
    materialize(night(1))
    # a run whose training settings cannot train: train fails at once, before Ray starts
    first = airflow_env.run_dag(dag, night(1), {"training_overrides": {"epochs": 0}})
    assert first["state"] == "failed" and first["tasks"]["train"] == "failed", first
    by_dag_test = [a for a in _alerts(capfd, caplog) if a["event"] == "run failed"]
    assert len(by_dag_test) == 1  # dag.test ran it on the DAG itself

    cleared = airflow_env.clear_tasks(DAG_ID, first["run_id"], ["train"], include_downstream=True)
    assert "train" in cleared
    again = airflow_env.resume_run(dag, first["run_id"])
    assert again["state"] == "failed" and again["tries"]["train"] == 2, again
    run_failed = [a for a in _alerts(capfd, caplog) if a["event"] == "run failed"]
    assert len(run_failed) == 1, run_failed
    alert = run_failed[0]
    assert alert["dag_id"] == DAG_ID and alert["run_id"] == first["run_id"] and alert["reason"] == "task_failure"
    # the context the scheduler sends: the run's last failed task instance, as dag.test's was
    assert alert["task_id"] == by_dag_test[0]["task_id"] and alert["try_number"] == again["tries"][alert["task_id"]]
    assert alert["action"] == by_dag_test[0]["action"]
