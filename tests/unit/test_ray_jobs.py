"""Remote training through the Ray Jobs API, without a cluster: submission ids, adopt-or-resubmit, result
collection, deferral (RayHook behind RayTrainOperator, with a fake JobSubmissionClient), and RayJobTrigger
against a fake Jobs API (aiohttp) on loopback."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred

from gd_provider.core.training.entrypoint import write_json_atomic
from gd_provider.demo.schema import training_spec as demo_training_spec
from gd_provider.hooks import ray as ray_hooks
from gd_provider.hooks.ray import attempt_id, new_log_lines, parse_ray_connection, ray_submission_id
from gd_provider.operators.training import RayTrainOperator
from gd_provider.triggers.ray import RayJobTrigger

from ..support import fake_context

TOKEN = "tok-secret-123"


def _conn(monkeypatch, url: str) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_RAY_DEFAULT",
        json.dumps({"conn_type": "ray", "host": url, "password": TOKEN,
                    "extra": {"runtime_env": {"env_vars": {"EXTRA": "1"}}}}),
    )


def bind(monkeypatch, client, url: str = "http://ray-head:8265"):
    """The Ray connection points at ``url``, and every RayHook's ``get_conn()`` is ``client``."""
    _conn(monkeypatch, url)
    monkeypatch.setattr(ray_hooks, "job_client_for", lambda config: client)
    return client


class FakeJobs:
    """Just enough of JobSubmissionClient: jobs by submission id with a status each."""

    def __init__(self, jobs: dict[str, str] | None = None) -> None:
        self.jobs = dict(jobs or {})
        self.submitted: list[dict] = []
        self.stopped: list[str] = []
        self.logs: dict[str, str] = {}

    def get_job_info(self, sid):
        if sid not in self.jobs:
            raise RuntimeError(f"Request failed with status code 404: Job {sid} does not exist.")
        return SimpleNamespace(status=self.jobs[sid], message=f"job {sid} is {self.jobs[sid]}", error_type=None)

    def get_job_status(self, sid):
        return self.get_job_info(sid).status

    def get_job_logs(self, sid):
        return self.logs.get(sid, "")

    def submit_job(self, *, entrypoint, submission_id, runtime_env, metadata):
        if submission_id in self.jobs:
            raise RuntimeError(f"Job with submission_id {submission_id} already exists.")
        self.jobs[submission_id] = "PENDING"
        self.submitted.append(
            {"entrypoint": entrypoint, "submission_id": submission_id, "runtime_env": runtime_env, "metadata": metadata}
        )
        return submission_id

    def stop_job(self, sid):
        self.stopped.append(sid)
        was_running = self.jobs.get(sid) in ("PENDING", "RUNNING")
        self.jobs[sid] = "STOPPED"
        return was_running


def _op(**kwargs) -> RayTrainOperator:
    return RayTrainOperator(
        task_id="train",
        dataset={"uri": "/nowhere/train.parquet", "sha256": "0" * 64, "rows": 10, "columns": []},
        spec=demo_training_spec(epochs=2).to_dict(),
        model_name="remote_model",
        poll_interval=0.01,
        **kwargs,
    )


def _cluster(url="http://ray-head:8265"):
    return parse_ray_connection(url, None, None, TOKEN, {"runtime_env": {"env_vars": {"EXTRA": "1"}}})


def test_submission_id_is_deterministic_per_task_instance_and_try_independent():
    sid = ray_submission_id("dag", "scheduled__2026-02-01", "train")
    assert re.fullmatch(r"gd-[0-9a-f]{24}", sid)
    assert sid == ray_submission_id("dag", "scheduled__2026-02-01", "train", -1)
    assert sid == ray_submission_id("dag", "scheduled__2026-02-01", "train", None)
    others = {
        ray_submission_id("dag2", "scheduled__2026-02-01", "train"),
        ray_submission_id("dag", "scheduled__2026-02-02", "train"),
        ray_submission_id("dag", "scheduled__2026-02-01", "train2"),
        ray_submission_id("dag", "scheduled__2026-02-01", "train", 0),
    }
    assert sid not in others and len(others) == 4
    assert attempt_id(sid, 1) == sid and attempt_id(sid, 3) == f"{sid}-r3"
    # the operator derives it from the context, whatever the try number
    op = _op()
    ctx1, ctx2 = fake_context(run_id="r1"), fake_context(run_id="r1")
    ctx2["ti"].try_number = 3
    assert op._base_submission_id(ctx1) == op._base_submission_id(ctx2) == ray_submission_id("test_dag", "r1", "train")


def test_a_bad_spec_fails_when_the_dag_is_parsed_naming_the_field():
    with pytest.raises(ValueError, match=r"train: invalid training spec: .*'lr'"):
        RayTrainOperator(task_id="train", dataset={}, model_name="m",
                         spec={**demo_training_spec().to_dict(), "lr": -1.0})
    with pytest.raises(ValueError, match="learning_rate"):
        RayTrainOperator(task_id="train", dataset={}, model_name="m",
                         spec={**demo_training_spec().to_dict(), "learning_rate": 0.1})


def test_two_training_tasks_of_one_dag_run_never_share_checkpoints():
    """The Ray Train run name (what a retry resumes from) is keyed by task and map index as well as run."""
    spec = demo_training_spec(epochs=2)
    ctx = fake_context(run_id="r1")
    names = {_op()._run_name(ctx, spec)}
    other = RayTrainOperator(task_id="train_model_b", dataset={}, spec=spec.to_dict(), model_name="b")
    names.add(other._run_name(ctx, spec))
    ctx["ti"].map_index = 2
    names.add(_op()._run_name(ctx, spec))
    assert names == {"train-test_dag_r1", "train_model_b-test_dag_r1", "train_2_-test_dag_r1"}


def test_submit_then_adopt_running_then_resubmit_after_failure(gd_home, capsys, monkeypatch):
    op, client, ctx = _op(), bind(monkeypatch, FakeJobs()), fake_context()
    spec = op._resolve_spec()
    jobs_dir = op._jobs_dir(ctx)
    base = op._base_submission_id(ctx)

    assert op._adopt_or_submit(ctx, spec, jobs_dir) == (base, "PENDING")
    (job,) = client.submitted
    assert job["entrypoint"].startswith("python -m gd_provider.core.training.entrypoint --request ")
    assert job["runtime_env"]["env_vars"]["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert job["runtime_env"]["env_vars"]["EXTRA"] == "1"
    assert job["metadata"]["gd.task_id"] == "train" and TOKEN not in json.dumps(job)
    request = json.loads((jobs_dir / f"{base}.request.json").read_text())
    assert request["submission_id"] == base and request["result_path"].endswith(f"{base}.result.json")
    assert request["run_name"] == "train-test_dag_manual__test" and request["spec"]["epochs"] == 2

    client.jobs[base] = "RUNNING"
    assert op._adopt_or_submit(ctx, spec, jobs_dir) == (base, "RUNNING")
    assert len(client.submitted) == 1

    client.jobs[base] = "FAILED"
    capsys.readouterr()
    assert op._adopt_or_submit(ctx, spec, jobs_dir) == (f"{base}-r2", "PENDING")
    out = capsys.readouterr().out  # the task log (structlog writes to stdout here)
    assert "ended FAILED" in out and f"resubmitting as {base}-r2" in out
    client.jobs[f"{base}-r2"] = "SUCCEEDED"
    assert op._adopt_or_submit(ctx, spec, jobs_dir) == (f"{base}-r2", "SUCCEEDED")
    client.jobs[f"{base}-r2"] = "STOPPED"
    assert op._adopt_or_submit(ctx, spec, jobs_dir)[0] == f"{base}-r3"
    assert [j["submission_id"] for j in client.submitted] == [base, f"{base}-r2", f"{base}-r3"]


def test_collect_input_error_fails_without_retry_and_shows_the_log_tail(gd_home, monkeypatch):
    op, client, ctx = _op(), bind(monkeypatch, FakeJobs()), fake_context()
    jobs_dir = op._jobs_dir(ctx)
    sid = "gd-x"
    write_json_atomic(jobs_dir / f"{sid}.request.json", {"result_path": str(jobs_dir / "x.result.json")})
    write_json_atomic(jobs_dir / "x.result.json", {"kind": "input_error", "error": "DatasetError: dataset /x does not exist"})
    client.jobs[sid] = "FAILED"
    client.logs[sid] = "".join(f"line {i}\n" for i in range(100))
    with pytest.raises(AirflowFailException, match=r"cannot train: DatasetError: dataset /x does not exist") as err:
        op.hook.collect_result(sid, "FAILED", op._request_path(jobs_dir, sid))
    assert "line 99" in str(err.value) and "line 59" not in str(err.value)


def test_collect_crashed_or_stopped_job_is_retryable_and_missing_result_is_explained(gd_home, monkeypatch):
    op, ctx = _op(), fake_context()
    client = bind(monkeypatch, FakeJobs({"gd-y": "FAILED", "gd-z": "SUCCEEDED"}))
    jobs_dir = op._jobs_dir(ctx)
    for sid in ("gd-y", "gd-z"):
        write_json_atomic(jobs_dir / f"{sid}.request.json", {"result_path": str(jobs_dir / f"{sid}.result.json")})
    client.logs["gd-y"] = "Traceback...\nMemoryError\n"
    with pytest.raises(AirflowException, match=r"(?s)gd-y ended FAILED.*retry resubmits.*MemoryError") as err:
        op.hook.collect_result("gd-y", "FAILED", op._request_path(jobs_dir, "gd-y"))
    assert not isinstance(err.value, AirflowFailException)
    with pytest.raises(AirflowFailException, match="same path"):
        op.hook.collect_result("gd-z", "SUCCEEDED", op._request_path(jobs_dir, "gd-z"))


def test_on_kill_stops_the_job_and_job_timeout_stops_it_too(monkeypatch):
    op, client = _op(job_timeout=0.05), bind(monkeypatch, FakeJobs({"gd-k": "RUNNING"}))
    op.on_kill()  # nothing submitted yet: nothing to stop, and no hook built
    assert "hook" not in op.__dict__
    op._submission_id = "gd-k"
    op.on_kill()
    assert client.stopped == ["gd-k"] and client.jobs["gd-k"] == "STOPPED"
    client.jobs["gd-t"] = "RUNNING"
    with pytest.raises(AirflowException, match="job_timeout=0.05"):
        op.hook.wait_for_job("gd-t", poll_interval=op.poll_interval, timeout=op.job_timeout)
    assert client.stopped[-1] == "gd-t"


def test_deferrable_submits_then_defers_to_the_trigger_without_the_token(gd_home, monkeypatch):
    client = bind(monkeypatch, FakeJobs())
    ctx = fake_context()
    op = _op(deferrable=True, job_timeout=600)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(ctx)
    trigger = deferred.value.trigger
    assert isinstance(trigger, RayJobTrigger) and deferred.value.method_name == "execute_complete"
    classpath, kwargs = trigger.serialize()
    assert classpath == "gd_provider.triggers.ray.RayJobTrigger"
    assert kwargs["submission_id"] == op._base_submission_id(ctx) == client.submitted[0]["submission_id"]
    assert TOKEN not in json.dumps(kwargs) and kwargs["timeout_at"]
    assert kwargs["stop_marker"] == str(op._jobs_dir(ctx) / f"{kwargs['submission_id']}.stop_requested")
    assert ctx["ti"].xcoms[("task", "_link_RayJobLink")] == f"http://ray-head:8265/#/jobs/{kwargs['submission_id']}"
    with pytest.raises(AirflowException, match="waiting for Ray job .* failed: boom"):
        op.execute_complete(ctx, {"status": "error", "submission_id": kwargs["submission_id"], "message": "boom"})
    with pytest.raises(AirflowException, match="stopped it"):
        op.execute_complete(ctx, {"status": "timeout", "submission_id": kwargs["submission_id"], "message": "late"})
    assert client.stopped == [kwargs["submission_id"]]


# ------------------------------------------------------------------------------ trigger vs a fake Jobs API
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _serve(states: dict[str, list[str]], seen: list, *, after_stop: tuple[str, ...] = ("STOPPED",),
                 answered: list | None = None):
    """A fake Jobs API. A stop POST replaces the job's states with ``after_stop`` (the last one sticks);
    ``answered`` records each status GET's ``(sid, status)``."""
    from aiohttp import web

    async def job(request):
        seen.append((request.method, request.path, request.headers.get("Authorization")))
        sid = request.match_info["sid"]
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.Response(status=401, text="Unauthorized: Missing authentication token")
        if sid not in states:
            return web.Response(status=404, text=f"Job {sid} does not exist")
        status = states[sid].pop(0) if len(states[sid]) > 1 else states[sid][0]
        if answered is not None:
            answered.append((sid, status))
        return web.json_response({"status": status, "message": f"{sid} {status}", "error_type": None})

    async def logs(request):
        return web.json_response({"logs": "epoch 1\nepoch 2\n"})

    async def stop(request):
        seen.append((request.method, request.path, request.headers.get("Authorization")))
        states[request.match_info["sid"]] = list(after_stop)
        return web.json_response({"stopped": True})

    app = web.Application()
    app.router.add_get("/api/jobs/{sid}", job)
    app.router.add_get("/api/jobs/{sid}/logs", logs)
    app.router.add_post("/api/jobs/{sid}/stop", stop)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def _first_event(trigger):
    async for event in trigger.run():
        return event.payload


def test_trigger_polls_until_terminal_times_out_and_stops_on_kill(gd_home, monkeypatch):
    states = {"gd-ok": ["PENDING", "RUNNING", "SUCCEEDED"], "gd-long": ["RUNNING"]}
    seen: list = []

    async def scenario():
        runner, url = await _serve(states, seen)
        try:
            _conn(monkeypatch, url)
            ok = await _first_event(RayJobTrigger(submission_id="gd-ok", poll_interval=0.01))
            missing = await _first_event(RayJobTrigger(submission_id="gd-nope", poll_interval=0.01))
            late = await _first_event(
                RayJobTrigger(submission_id="gd-long", poll_interval=0.01, timeout_at="2000-01-01T00:00:00+00:00")
            )
            await RayJobTrigger(submission_id="gd-long").on_kill()
            monkeypatch.setenv("AIRFLOW_CONN_RAY_DEFAULT", json.dumps({"conn_type": "ray", "host": url}))
            unauthorized = await _first_event(RayJobTrigger(submission_id="gd-ok", poll_interval=0.01))
            return ok, missing, late, unauthorized
        finally:
            await runner.cleanup()

    ok, missing, late, unauthorized = asyncio.run(scenario())
    assert ok == {"status": "terminal", "job_status": "SUCCEEDED", "submission_id": "gd-ok", "message": "gd-ok SUCCEEDED",
                  "error_type": None, "start_time": None, "end_time": None}
    assert missing["status"] == "error" and "404" in missing["message"]
    assert late["status"] == "timeout" and late["job_status"] == "RUNNING"
    assert ("POST", "/api/jobs/gd-long/stop", f"Bearer {TOKEN}") in seen and states["gd-long"] == ["STOPPED"]
    assert unauthorized["status"] == "error" and "401" in unauthorized["message"]


def test_trigger_on_kill_writes_the_stop_marker_and_waits_for_the_job_to_end(gd_home, monkeypatch, tmp_path):
    """A clear of a deferred ``train``: the trigger's on_kill marks the job as being stopped (the next try
    then never adopts it), asks Ray to stop it and follows it until it has ended."""
    states = {"gd-d": ["RUNNING"]}
    seen: list = []
    answered: list = []
    marker = tmp_path / "ray_jobs" / "gd-d.stop_requested"
    trigger = RayJobTrigger(submission_id="gd-d", poll_interval=0.01, stop_marker=str(marker))
    assert trigger.serialize()[1]["stop_marker"] == str(marker)

    async def scenario():
        # the job takes two more polls to wind down after the stop request
        runner, url = await _serve(states, seen, after_stop=("RUNNING", "RUNNING", "STOPPED"), answered=answered)
        try:
            _conn(monkeypatch, url)
            await trigger.on_kill()
        finally:
            await runner.cleanup()

    asyncio.run(scenario())
    assert marker.read_text().startswith("stop requested by trigger on_kill")
    stop = ("POST", "/api/jobs/gd-d/stop", f"Bearer {TOKEN}")
    assert seen[0] == stop  # stop first, then follow the job
    assert seen[1:] == [("GET", "/api/jobs/gd-d", f"Bearer {TOKEN}")] * 3
    # on_kill's own polls followed the job until it had ended, and stopped polling then
    assert answered == [("gd-d", "RUNNING"), ("gd-d", "RUNNING"), ("gd-d", "STOPPED")]


def test_entrypoint_reports_input_errors_in_its_result_file_without_airflow(tmp_path):
    import subprocess
    import sys

    from gd_provider.core.training.entrypoint import EXIT_INPUT_ERROR, build_request, main

    result_path = tmp_path / "out" / "gd-e.result.json"
    request = build_request(
        {"uri": str(tmp_path / "missing.parquet"), "sha256": "0" * 64, "rows": 10,
         "columns": [*demo_training_spec().required_columns, *demo_training_spec().key_columns]},
        demo_training_spec(epochs=1).to_dict(),
        storage_path=str(tmp_path / "ray"), run_name="train-x", result_path=str(result_path), submission_id="gd-e",
    )
    (tmp_path / "req.json").write_text(json.dumps(request))
    assert main(["--request", str(tmp_path / "req.json")]) == EXIT_INPUT_ERROR
    envelope = json.loads(result_path.read_text())
    assert envelope["kind"] == "input_error" and "DatasetError" in envelope["error"] and "missing.parquet" in envelope["error"]
    assert envelope["meta"]["submission_id"] == "gd-e" and [p.name for p in result_path.parent.iterdir()] == [result_path.name]
    code = "import sys, gd_provider.core.training.entrypoint; sys.exit(any(m.startswith('airflow') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_an_adopted_finished_jobs_mlflow_run_is_reused_only_while_it_is_intact(gd_home, mlflow_config, capsys):
    """``_logged_before``: the record of what an earlier try logged for a job is used only when it is for
    the same DAG run and job and its MLflow run still exists, finished; otherwise the result is logged again."""
    import mlflow

    mlflow_config.activate()
    client = mlflow_config.client()
    experiment_id = client.create_experiment("reuse")
    tags = {"gd.dag_id": "d", "gd.airflow_run_id": "r", "gd.run_key": "k", "gd.ray.submission_id": "gd-x"}
    with mlflow.start_run(experiment_id=experiment_id, tags=tags) as run:
        pass
    logged = {"mlflow_run_id": run.info.run_id, "status": "completed", "metrics": {"val_roc_auc": 0.9}}
    record = gd_home / "gd-x.mlflow.json"
    write_json_atomic(record, {"tags": tags, "logged": logged})
    op = RayTrainOperator(task_id="train", dataset={}, spec=demo_training_spec().to_dict(), model_name="m")

    assert op._logged_before(record, mlflow_config, tags) == logged
    assert op._logged_before(gd_home / "absent.json", mlflow_config, tags) is None
    assert op._logged_before(record, mlflow_config, {**tags, "gd.ray.submission_id": "gd-x-r2"}) is None
    record.with_name("bad.json").write_text("{not json")
    assert op._logged_before(record.with_name("bad.json"), mlflow_config, tags) is None
    client.delete_run(run.info.run_id)
    assert op._logged_before(record, mlflow_config, tags) is None
    out = capsys.readouterr().out
    assert "Reusing MLflow run" in out and "is deleted/FINISHED" in out and "belongs to" in out and "unreadable" in out


def test_job_log_tail_holds_back_a_partial_line_until_it_ends_and_restarts_after_rotation():
    lines, offset = new_log_lines("epoch 1\nepoch 2\nepo", 0, final=False)
    assert (lines, offset) == (["epoch 1", "epoch 2"], 16)
    assert new_log_lines("epoch 1\nepoch 2\nepo", offset, final=False) == ([], 16)  # nothing new yet
    assert new_log_lines("epoch 1\nepoch 2\nepoch 3\n", offset, final=False) == (["epoch 3"], 24)
    assert new_log_lines("epoch 1\nepoch 2\nepoch 3\ndone", 24, final=True) == (["done"], 28)  # the last line
    assert new_log_lines("new log\n", 24, final=False) == (["new log"], 8)  # rotated: from the start
