"""Remote training through the Ray Jobs API against a real local cluster (``ray start --head`` with the
dashboard and token auth), driven by ``RayTrainOperator`` and ``RayJobTrigger``.

The cluster is this module's own: a short ``--temp-dir`` under /tmp (Unix socket paths are limited to
~107 bytes), free ports for every listener, ``RAY_AUTH_MODE=token`` with a fresh token that the tests'
Ray connection carries as its password. It is torn down by signalling the ``ray start --block`` process and
then killing, by pid, whatever of its process tree is left - never ``ray stop``, which would stop every
Ray instance on the machine (other test runs included).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred

from gd_provider.core.data import write_dataset
from gd_provider.core.training.spec import TrainingSpec
from gd_provider.demo import schema as S
from gd_provider.demo.schema import training_spec as demo_training_spec
from gd_provider.hooks.ray import parse_ray_connection
from gd_provider.operators.training import RayTrainOperator
from gd_provider.triggers.ray import RayJobTrigger
from tests.harness.stack import descendants, process_table

from ..support import fake_context
from .test_training import synthetic_transactions

pytestmark = pytest.mark.integration

N_ROWS = 2000
ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "RAY_USAGE_STATS_ENABLED": "0"}


# ---------------------------------------------------------------------------------------------- cluster
def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Cluster:
    def __init__(self, url: str, token: str, temp_dir: Path, proc: subprocess.Popen) -> None:
        self.url, self.token, self.temp_dir, self.proc = url, token, temp_dir, proc
        self.known_pids: set[int] = set()

    def job_client(self):
        from gd_provider.hooks.ray import job_client_for

        return job_client_for(parse_ray_connection(self.url, None, None, self.token, {}))

    def remember_processes(self) -> None:
        self.known_pids |= descendants(self.proc.pid)

    def api(self, path: str):
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=20) as resp:
            return json.loads(resp.read())


def _stop_cluster(cluster: Cluster) -> None:
    cluster.remember_processes()
    if cluster.proc.poll() is None:
        cluster.proc.send_signal(signal.SIGTERM)  # `ray start --block` starts tearing its processes down
        with contextlib.suppress(subprocess.TimeoutExpired):
            cluster.proc.wait(timeout=5)
    # then SIGKILL, by pid, whatever this cluster started and is still there (GCS/raylet linger on SIGTERM)
    for sig_round in range(3):
        alive = (cluster.known_pids | {cluster.proc.pid}) & set(process_table())
        if not alive:
            break
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(1 + sig_round)
    with contextlib.suppress(subprocess.TimeoutExpired):
        cluster.proc.wait(timeout=5)


@pytest.fixture(scope="module")
def cluster():
    ray_bin = Path(sys.executable).with_name("ray")
    temp_dir = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))  # short: Unix socket paths are limited
    gcs, dash, client_port, agent_http, agent_grpc, env_agent, metrics = _free_ports(7)
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH", "AIRFLOW_CONN_"))}
    env.update(ENV)
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
    # Ray's state API inside the cluster (Train's placement-group cleaner) auto-detects "the" local
    # instance and fails when other tests run Ray on this machine too: name this one.
    env["RAY_ADDRESS"] = f"127.0.0.1:{gcs}"
    # job entrypoints run `python ...`: this venv's interpreter, which imports gd_provider
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    log = open(temp_dir / "ray-start.log", "w")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", "--port", str(gcs), "--dashboard-port", str(dash),
         "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1", "--include-dashboard", "true", "--num-cpus", "2", "--num-gpus", "0",
         "--ray-client-server-port", str(client_port), "--dashboard-agent-listen-port", str(agent_http),
         "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(env_agent),
         "--metrics-export-port", str(metrics), "--temp-dir", str(temp_dir), "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{dash}"
    handle = Cluster(url, token, temp_dir, proc)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                handle.api("/api/version")
                handle.job_client().list_jobs()
                break
            except Exception as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    raise RuntimeError(
                        f"Ray head did not start ({exc}):\n{(temp_dir / 'ray-start.log').read_text()[-4000:]}"
                    ) from exc
                time.sleep(0.5)
        handle.remember_processes()
        yield handle
    finally:
        _stop_cluster(handle)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def remote(cluster, gd_home, monkeypatch):
    """The Ray connection points at the cluster (token as password); returns the cluster."""
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv(
        "AIRFLOW_CONN_RAY_DEFAULT", json.dumps({"conn_type": "ray", "host": cluster.url, "password": cluster.token})
    )
    yield cluster
    cluster.remember_processes()
    client = cluster.job_client()
    for job in client.list_jobs():  # never leave a job running into the next test
        if str(job.status) in ("PENDING", "RUNNING") and job.submission_id:
            client.stop_job(job.submission_id)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    df = synthetic_transactions(N_ROWS, seed=3)
    return write_dataset(
        df,
        str(tmp_path_factory.mktemp("ray_jobs_data") / "train.parquet"),
        sort_by=[S.TIMESTAMP, S.TRANSACTION_ID],
        entity_keys=list(S.ENTITY_KEYS),
        timestamp_column=S.TIMESTAMP,
        label_column=S.LABEL,
    ).to_dict()


def _spec(**overrides) -> dict:
    return demo_training_spec(seed=7, num_workers=1, cpus_per_worker=1.0, **{"epochs": 2, **overrides}).to_dict()


def _op(manifest, **kwargs) -> RayTrainOperator:
    return RayTrainOperator(
        task_id="train", dataset=manifest, model_name="remote_model", poll_interval=0.5,
        **{"spec": _spec(), **kwargs},
    )


def _jobs_with_prefix(client, prefix: str) -> list:
    return [j for j in client.list_jobs() if (j.submission_id or "").startswith(prefix)]


def _wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------- tests
def test_remote_training_end_to_end_then_a_retry_adopts_the_job(remote, manifest, capsys):
    import mlflow

    from gd_provider.core.training.runner import holdout_frame
    from gd_provider.hooks.mlflow import MlflowHook

    ctx = fake_context(run_id="manual__remote")
    op = _op(manifest)
    t0 = time.monotonic()
    out = op.execute(ctx)
    wall = time.monotonic() - t0
    sid = out["ray_job"]["submission_id"]
    assert sid == op._base_submission_id(ctx) and out["status"] == "completed"
    assert out["metrics"]["epoch"] == 2 and out["health"]["status"] == "completed"
    log = capsys.readouterr().out
    assert f"[ray job {sid}]" in log and "gd_provider training completed" in log  # job log tailed
    # the job driver's own lines keep their level: the epoch lines and the summary at INFO, the marker read
    assert f"[ray job {sid}] epoch 1/2: train_loss " in log and f"[ray job {sid}] training completed in " in log
    assert "[gd " not in log
    assert remote.token not in log
    assert ctx["ti"].xcoms[("task", "_link_RayJobLink")] == f"{remote.url}/#/jobs/{sid}"
    assert "/#/experiments/" in ctx["ti"].xcoms[("task", "_link_MlflowRunLink")]

    client = MlflowHook().get_conn()
    run = client.get_run(out["mlflow_run_id"])
    assert run.data.tags["gd.ray.submission_id"] == sid and run.data.tags["gd.health.status"] == "completed"
    assert run.data.params["dataset.sha256"] == manifest["sha256"]
    holdout = holdout_frame(manifest, TrainingSpec.from_dict(_spec()))
    scores = np.asarray(mlflow.pyfunc.load_model(out["model_uri"]).predict(holdout))
    assert scores.shape == (len(holdout),) and np.all((scores >= 0) & (scores <= 1))
    timings = json.loads((op._jobs_dir(ctx) / f"{sid}.result.json").read_text())["meta"]
    print(f"\nremote training: operator wall {wall:.1f} s, driver {timings['seconds']:.1f} s")

    # a second try of the same task instance adopts the finished job: no second job on the cluster, and
    # no second MLflow run either - the same training manifest as the first try's
    again = op.execute(ctx)
    assert again == out
    log = capsys.readouterr().out
    assert "already SUCCEEDED: using its result" in log and f"Reusing MLflow run {out['mlflow_run_id']}" in log
    assert [j.submission_id for j in _jobs_with_prefix(remote.job_client(), sid)] == [sid]
    assert _runs_of_job(client, sid) == [out["mlflow_run_id"]]


def _runs_of_job(client, submission_id: str) -> list[str]:
    experiment = client.get_experiment_by_name("remote_model")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`gd.ray.submission_id` = '{submission_id}'")
    return [r.info.run_id for r in runs]


def test_a_job_resubmitted_after_a_failure_gets_its_own_mlflow_run_which_a_retry_reuses(remote, manifest, capsys):
    from gd_provider.hooks.mlflow import MlflowHook

    ctx = fake_context(run_id="manual__failed_then_ok")
    op = _op(manifest)
    sid = op._base_submission_id(ctx)
    # an earlier try's job that crashed (no result, no MLflow run)
    jobs = remote.job_client()
    jobs.submit_job(entrypoint="python -c \"import sys; sys.exit(1)\"", submission_id=sid)
    _wait_for(lambda: str(jobs.get_job_status(sid)) == "FAILED", 60, "the crashing job to fail")

    out = op.execute(ctx)
    assert out["ray_job"]["submission_id"] == f"{sid}-r2" and out["status"] == "completed"
    assert f"resubmitting as {sid}-r2" in capsys.readouterr().out
    client = MlflowHook().get_conn()
    assert _runs_of_job(client, f"{sid}-r2") == [out["mlflow_run_id"]] and _runs_of_job(client, sid) == []

    # a retry adopts the SUCCEEDED -r2 job and its run; losing the record (an interrupted try) logs a new run
    # and marks the orphan as superseded
    assert op.execute(ctx) == out
    (op._jobs_dir(ctx) / f"{sid}-r2.mlflow.json").unlink()
    third = op.execute(ctx)
    assert third["mlflow_run_id"] != out["mlflow_run_id"] and third["metrics"] == out["metrics"]
    assert sorted(_runs_of_job(client, f"{sid}-r2")) == sorted([out["mlflow_run_id"], third["mlflow_run_id"]])
    assert client.get_run(out["mlflow_run_id"]).data.tags["gd.superseded_by"] == third["mlflow_run_id"]
    assert "gd.superseded_by" not in client.get_run(third["mlflow_run_id"]).data.tags
    assert op.execute(ctx) == third
    assert sorted(j.submission_id for j in _jobs_with_prefix(jobs, sid)) == [sid, f"{sid}-r2"]


def test_on_kill_stops_a_running_job_which_a_second_try_had_adopted(remote, manifest, gd_home):
    ctx = fake_context(run_id="manual__kill")
    first, second = _op(manifest, spec=_spec(epochs=400)), _op(manifest, spec=_spec(epochs=400))
    sid = first._base_submission_id(ctx)
    errors: dict[str, BaseException] = {}

    def run(name, op):
        try:
            op.execute(ctx)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertions
            errors[name] = exc

    threads = [threading.Thread(target=run, args=("first", first), daemon=True)]
    t0 = time.monotonic()
    threads[0].start()
    client = remote.job_client()
    _wait_for(lambda: _jobs_with_prefix(client, sid) and str(client.get_job_status(sid)) == "RUNNING", 90,
              "the job to run")
    run_dir = gd_home / "runs" / "test_dag" / "manual__kill" / "ray"
    print(f"\nrunning after {time.monotonic() - t0:.1f} s")
    _wait_for(lambda: list(run_dir.glob("*/checkpoint_*")), 120, "a first checkpoint (workers training)")
    print(f"first checkpoint after {time.monotonic() - t0:.1f} s")
    threads.append(threading.Thread(target=run, args=("second", second), daemon=True))
    threads[1].start()  # a retry while the job runs: adopts it
    _wait_for(lambda: second._submission_id == sid, 30, "the second try to adopt the job")
    remote.remember_processes()

    print(f"adopted after {time.monotonic() - t0:.1f} s")
    first.on_kill()
    for thread in threads:
        thread.join(timeout=60)
    print(f"threads done after {time.monotonic() - t0:.1f} s")
    assert str(client.get_job_status(sid)) == "STOPPED"
    assert [j.submission_id for j in _jobs_with_prefix(client, sid)] == [sid]
    for name in ("first", "second"):
        assert isinstance(errors.get(name), AirflowException), errors
        assert not isinstance(errors[name], AirflowFailException)  # retryable: a retry resubmits
        assert "ended STOPPED" in str(errors[name])

    # the run's actors (controller, training workers) die and its placement group is removed; Ray's own
    # detached per-cluster helpers (Ray Data's autoscaling coordinator, Train's PG cleaner) may linger
    helpers = {"_AutoscalingCoordinatorActor", "PlacementGroupCleaner"}
    live: list = []

    def released():
        actors = remote.api("/api/v0/actors?limit=1000")["data"]["result"]["result"]
        groups = remote.api("/api/v0/placement_groups?limit=1000")["data"]["result"]["result"]
        live[:] = [a.get("class_name") for a in actors if a.get("state") != "DEAD" and a.get("class_name") not in helpers]
        live.extend(f"placement group {g.get('placement_group_id')} {g.get('state')}" for g in groups
                    if g.get("state") != "REMOVED")
        return not live

    try:
        _wait_for(released, 60, "the job's actors and placement group to go")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; still there: {live}") from None
    driver_pids = [p for p in descendants(remote.proc.pid) if "entrypoint" in _cmdline(p)]
    assert driver_pids == []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_trigger_reports_terminal_states_and_stops_the_job_on_kill(remote):
    client = remote.job_client()
    client.submit_job(entrypoint="python -c \"print('hello from ray')\"", submission_id="gd-trig-ok")
    client.submit_job(entrypoint="python -c \"import sys; sys.exit(3)\"", submission_id="gd-trig-fail")
    client.submit_job(entrypoint="python -c \"import time; time.sleep(120)\"", submission_id="gd-trig-kill")

    async def first(trigger):
        async for event in trigger.run():
            return event.payload

    ok = asyncio.run(first(RayJobTrigger(submission_id="gd-trig-ok", poll_interval=0.5)))
    assert ok["status"] == "terminal" and ok["job_status"] == "SUCCEEDED" and ok["submission_id"] == "gd-trig-ok"
    fail = asyncio.run(first(RayJobTrigger(submission_id="gd-trig-fail", poll_interval=0.5)))
    assert fail["job_status"] == "FAILED" and "exit code 3" in fail["message"]
    _wait_for(lambda: str(client.get_job_status("gd-trig-kill")) == "RUNNING", 60, "the sleeper to run")

    async def kill_while_deferred():
        trigger = RayJobTrigger(submission_id="gd-trig-kill", poll_interval=0.5, tail_logs=False)
        task = asyncio.ensure_future(first(trigger))
        await asyncio.sleep(1.5)
        assert not task.done()
        task.cancel()  # what the triggerer does on a user kill, followed by on_kill()
        await trigger.on_kill()
        return await asyncio.gather(task, return_exceptions=True)

    asyncio.run(kill_while_deferred())
    _wait_for(lambda: str(client.get_job_status("gd-trig-kill")) == "STOPPED", 30, "the sleeper to stop")


def test_bad_dataset_fails_without_retry_with_the_job_log_tail_and_resubmits_on_rerun(remote, manifest, capsys):
    bad = {**manifest, "uri": "/nonexistent/gd/train.parquet"}
    ctx = fake_context(run_id="manual__bad")
    op = _op(bad)
    sid = op._base_submission_id(ctx)
    with pytest.raises(AirflowFailException, match=r"cannot train: DatasetError: dataset /nonexistent/gd/train.parquet "
                       r"does not exist \(Ray job gd-[0-9a-f]+ FAILED\)") as err:
        op.execute(ctx)
    assert "Last lines of its log" in str(err.value) and "gd_provider training cannot start" in str(err.value)
    # clearing the task re-executes it: the FAILED job is not adopted but resubmitted under -r2
    with pytest.raises(AirflowFailException, match=f"Ray job {sid}-r2 FAILED"):
        op.execute(ctx)
    assert f"resubmitting as {sid}-r2" in capsys.readouterr().out
    assert sorted(j.submission_id for j in _jobs_with_prefix(remote.job_client(), sid)) == [sid, f"{sid}-r2"]


def test_deferrable_training_resumes_from_the_trigger_event(remote, manifest):
    ctx = fake_context(run_id="manual__deferred")
    op = _op(manifest, deferrable=True, job_timeout=600)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(ctx)
    trigger = deferred.value.trigger

    async def first():
        async for event in trigger.run():
            return event.payload

    payload = asyncio.run(first())
    assert payload["status"] == "terminal" and payload["job_status"] == "SUCCEEDED"
    out = RayTrainOperator(**{**_op_kwargs(manifest), "deferrable": True}).execute_complete(ctx, payload)
    assert out["status"] == "completed" and out["ray_job"]["submission_id"] == trigger.submission_id
    assert out["model_uri"].startswith("models:/")
    # the event delivered again (a retry of the resumed task): the same run, not a second one
    again = RayTrainOperator(**{**_op_kwargs(manifest), "deferrable": True}).execute_complete(ctx, payload)
    assert again == out


def _op_kwargs(manifest) -> dict:
    return {"task_id": "train", "dataset": manifest, "model_name": "remote_model", "spec": _spec()}
