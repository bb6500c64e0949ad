"""RayHook's Ray Jobs API methods, sync (Ray's JobSubmissionClient) and async (aiohttp), against a fake Jobs
REST API served on loopback from a thread; RayTrainOperator's on_kill stopping a job through the hook; the
operator's ``deferrable`` default from ``[operators] default_deferrable``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from gd_provider.demo.schema import training_spec as demo_training_spec
from gd_provider.hooks.ray import (
    JobSubmission,
    RayHook,
    RayJobInfo,
    RayJobNotFoundError,
    RayJobsApiError,
    stop_marker_path,
)
from gd_provider.operators.training import RayTrainOperator

from ..support import fake_context

TOKEN = "tok-hook-456"


class FakeJobsApi:
    """The Ray Jobs REST API as Ray's JobSubmissionClient and our aiohttp client use it, in a thread.

    ``jobs[sid]`` holds the job's record; ``statuses[sid]`` the statuses its next GETs answer (the last one
    sticks); ``seen`` every request as ``(method, path, Authorization)``."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict] = {}
        self.statuses: dict[str, list[str]] = {}
        self.logs: dict[str, str] = {}
        self.seen: list[tuple[str, str, str | None]] = []
        self.after_stop: tuple[str, ...] = ("STOPPED",)
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def status(self, sid: str, *states: str) -> None:
        self.statuses[sid] = list(states)

    def paths(self, method: str | None = None) -> list[str]:
        return [path for m, path, _ in self.seen if method in (None, m)]

    # ---------------------------------------------------------------------------------------- server
    def _app(self):
        from aiohttp import web

        @web.middleware
        async def auth(request, handler):
            self.seen.append((request.method, request.path, request.headers.get("Authorization")))
            if request.headers.get("Authorization") != f"Bearer {TOKEN}":
                return web.Response(status=401, text="Unauthorized: Missing authentication token")
            return await handler(request)

        def known(sid: str):
            if sid not in self.jobs:
                raise web.HTTPNotFound(text=f"Job {sid} does not exist")

        async def version(request):
            import ray

            return web.json_response({"version": "4", "ray_version": ray.__version__, "ray_commit": "fake"})

        async def submit(request):
            body = await request.json()
            sid = body["submission_id"]
            if sid in self.jobs:
                return web.Response(status=400, text=f"Job with submission_id {sid} already exists. Please use "
                                                     "a different submission_id.")
            self.jobs[sid] = body
            self.statuses.setdefault(sid, ["PENDING"])
            return web.json_response({"job_id": sid, "submission_id": sid})

        async def job(request):
            sid = request.match_info["sid"]
            known(sid)
            states = self.statuses[sid]
            status = states.pop(0) if len(states) > 1 else states[0]
            return web.json_response({
                "type": "SUBMISSION", "job_id": None, "submission_id": sid, "status": status,
                "entrypoint": self.jobs[sid].get("entrypoint", "python x.py"), "message": f"{sid} is {status}",
                "error_type": None, "start_time": 1, "end_time": 2 if status in ("SUCCEEDED", "FAILED", "STOPPED")
                else None, "metadata": self.jobs[sid].get("metadata") or {}, "runtime_env": {},
            })

        async def logs(request):
            sid = request.match_info["sid"]
            known(sid)
            return web.json_response({"logs": self.logs.get(sid, "")})

        async def stop(request):
            sid = request.match_info["sid"]
            known(sid)
            was_running = self.statuses[sid][0] in ("PENDING", "RUNNING")
            self.statuses[sid] = list(self.after_stop)
            return web.json_response({"stopped": was_running})

        app = web.Application(middlewares=[auth])
        app.router.add_get("/api/version", version)
        app.router.add_post("/api/jobs/", submit)
        app.router.add_get("/api/jobs/{sid}", job)
        app.router.add_get("/api/jobs/{sid}/logs", logs)
        app.router.add_post("/api/jobs/{sid}/stop", stop)
        return app

    def start(self) -> FakeJobsApi:
        from aiohttp import web

        self._thread.start()

        async def serve():
            self._runner = web.AppRunner(self._app())
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            return site._server.sockets[0].getsockname()[1]

        port = asyncio.run_coroutine_threadsafe(serve(), self._loop).result(10)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def api(monkeypatch):
    """A fake Jobs API; the ``ray_default`` connection points at it with the token as password."""
    server = FakeJobsApi().start()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_RAY_DEFAULT", json.dumps({"conn_type": "ray", "host": server.url,
                                                                "password": TOKEN}))
    yield server
    server.close()


def _submission(tag: str = "x") -> JobSubmission:
    return JobSubmission(entrypoint=f"python -m train --tag {tag}", runtime_env={"env_vars": {"A": "1"}},
                         metadata={"gd.task_id": "train"})


def test_sync_methods_submit_adopt_resubmit_tail_and_stop(api, tmp_path, capsys):
    hook = RayHook()
    client = hook.get_conn()
    assert type(client).__name__ == "JobSubmissionClient" and hook.get_conn() is client  # built once
    prepared: list[str] = []

    def prepare(sid):
        prepared.append(sid)
        return _submission(sid)

    assert hook.submit_or_adopt("gd-a", prepare, markers_dir=tmp_path) == ("gd-a", "PENDING")
    assert api.jobs["gd-a"]["entrypoint"] == "python -m train --tag gd-a"
    assert api.jobs["gd-a"]["runtime_env"] == {"env_vars": {"A": "1"}}
    assert api.jobs["gd-a"]["metadata"] == {"gd.task_id": "train"}
    assert {auth for _, _, auth in api.seen} == {f"Bearer {TOKEN}"}

    api.status("gd-a", "RUNNING")  # a worker restarted while the job ran: the next try adopts it
    assert hook.submit_or_adopt("gd-a", prepare, markers_dir=tmp_path) == ("gd-a", "RUNNING")
    assert prepared == ["gd-a"]
    info = hook.get_job_info("gd-a")
    assert info == RayJobInfo("gd-a", "RUNNING", "gd-a is RUNNING", None, 1, None) and info.active
    assert hook.get_job_info("gd-nope") is None
    with pytest.raises(RayJobNotFoundError):
        hook.get_job_status("gd-nope")

    api.logs["gd-a"] = "epoch 1\nepoch 2\nepo"
    capsys.readouterr()
    offset = hook.tail_job_logs("gd-a", 0)
    assert offset == 16 and hook.get_job_logs("gd-a").endswith("epo")
    out = capsys.readouterr().out
    assert "[ray job gd-a] epoch 1" in out and "[ray job gd-a] epoch 2" in out and "epo\n" not in out
    assert hook.log_tail("gd-a", 1) == "epo"

    api.status("gd-a", "FAILED")
    assert hook.submit_or_adopt("gd-a", prepare, markers_dir=tmp_path) == ("gd-a-r2", "PENDING")
    assert "resubmitting as gd-a-r2" in capsys.readouterr().out
    api.status("gd-a-r2", "SUCCEEDED")
    assert hook.submit_or_adopt("gd-a", prepare, markers_dir=tmp_path) == ("gd-a-r2", "SUCCEEDED")
    assert prepared == ["gd-a", "gd-a-r2"]

    # a job another try submitted between our look-up and our submission is adopted
    api.jobs["gd-b"], api.statuses["gd-b"] = {"entrypoint": "python y.py"}, ["RUNNING"]
    assert hook.submit_job("gd-b", _submission()) == "RUNNING"

    # stop: marker first, then the stop request; the job is followed until it has ended
    api.status("gd-c", "RUNNING")
    api.jobs["gd-c"] = {"entrypoint": "python c.py"}
    api.after_stop = ("RUNNING", "STOPPED")
    marker = stop_marker_path(tmp_path, "gd-c")
    assert hook.stop_job("gd-c", stop_marker=marker, who="test") is True
    assert marker.read_text().startswith("stop requested by test")
    assert hook.wait_until_ended("gd-c", 10, interval=0.01) == "STOPPED"
    assert api.paths("POST")[-1] == "/api/jobs/gd-c/stop"
    # a job marked as being stopped is waited for and resubmitted, never adopted
    api.status("gd-c", "RUNNING", "STOPPED")
    assert hook.submit_or_adopt("gd-c", prepare, markers_dir=tmp_path, poll_interval=0.01) == ("gd-c-r2", "PENDING")


def test_wait_for_job_tails_until_terminal_and_names_a_vanished_job(api):
    hook = RayHook()
    api.jobs["gd-w"] = {"entrypoint": "python w.py"}
    api.status("gd-w", "PENDING", "RUNNING", "SUCCEEDED")
    api.logs["gd-w"] = "done"
    assert hook.wait_for_job("gd-w", poll_interval=0.01) == "SUCCEEDED"
    with pytest.raises(AirflowException, match="gd-gone disappeared from the cluster"):
        hook.wait_for_job("gd-gone", poll_interval=0.01)
    api.jobs["gd-t"] = {"entrypoint": "python t.py"}
    api.status("gd-t", "RUNNING")
    with pytest.raises(AirflowException, match="job_timeout=0.05 s: stopped it"):
        hook.wait_for_job("gd-t", poll_interval=0.01, timeout=0.05)
    assert api.paths("POST")[-1] == "/api/jobs/gd-t/stop"


def test_async_methods_use_the_same_paths_and_headers_as_the_sync_ones(api, tmp_path, capsys):
    api.jobs["gd-s"] = {"entrypoint": "python s.py"}
    api.status("gd-s", "RUNNING")
    api.logs["gd-s"] = "line 1\nline 2\n"
    sync = RayHook()
    sync.get_job_info("gd-s")
    sync.get_job_logs("gd-s")
    sync_paths = api.paths()
    api.seen.clear()
    marker = stop_marker_path(tmp_path, "gd-s")

    async def scenario():
        hook = RayHook()
        async with hook:  # one HTTP session for all of these
            info = await hook.async_get_job_info("gd-s")
            status = await hook.async_get_status("gd-s")
            logs = await hook.async_get_logs("gd-s")
            offset = await hook.async_tail_job_logs("gd-s", 7, final=False)
            with pytest.raises(RayJobNotFoundError, match="HTTP 404"):
                await hook.async_get_job_info("gd-nope")
        api.after_stop = ("RUNNING", "RUNNING", "STOPPED")
        stopped = await hook.async_stop_job("gd-s", stop_marker=marker, who="trigger on_kill")
        ended = await hook.async_wait_until_ended("gd-s", 10, interval=0.01)
        return info, status, logs, offset, stopped, ended

    info, status, logs, offset, stopped, ended = asyncio.run(scenario())
    assert info == RayJobInfo("gd-s", "RUNNING", "gd-s is RUNNING", None, 1, None) and status == "RUNNING"
    assert logs == "line 1\nline 2\n" and offset == 14 and "[ray job gd-s] line 2" in capsys.readouterr().out
    assert stopped is True and ended == "STOPPED" and marker.is_file()
    async_paths = api.paths()
    assert sync_paths[-2:] == ["/api/jobs/gd-s", "/api/jobs/gd-s/logs"]  # info, logs
    assert async_paths[:3] == ["/api/jobs/gd-s", "/api/jobs/gd-s", "/api/jobs/gd-s/logs"]  # info, status, logs
    assert ("POST", "/api/jobs/gd-s/stop", f"Bearer {TOKEN}") in api.seen
    assert {auth for _, _, auth in api.seen} == {f"Bearer {TOKEN}"}


def test_async_methods_refuse_a_missing_token_and_a_local_connection(api, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_RAY_DEFAULT", json.dumps({"conn_type": "ray", "host": api.url}))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    api.jobs["gd-s"], api.statuses["gd-s"] = {}, ["RUNNING"]
    with pytest.raises(RayJobsApiError, match="HTTP 401") as err:
        asyncio.run(RayHook().async_get_status("gd-s"))
    assert not isinstance(err.value, RayJobNotFoundError)
    assert asyncio.run(RayHook().async_stop_job("gd-s")) is None  # logged, not raised
    monkeypatch.setenv("AIRFLOW_CONN_RAY_LOCAL", json.dumps({"conn_type": "ray", "host": "local"}))
    with pytest.raises(AirflowException, match="embedded default"):
        asyncio.run(RayHook("ray_local").async_get_status("gd-s"))


# ------------------------------------------------------------------------------------- the operator's wiring
def _op(**kwargs) -> RayTrainOperator:
    return RayTrainOperator(
        task_id="train", dataset={"uri": "/nowhere/train.parquet", "sha256": "0" * 64, "rows": 10, "columns": []},
        spec=demo_training_spec(epochs=2).to_dict(), model_name="hook_model", poll_interval=0.05, **kwargs,
    )


def test_on_kill_stops_the_running_job_through_the_hook(api, gd_home):
    """A task killed while it waits for its Ray job: on_kill (SIGTERM, another thread here) writes the stop
    marker and stops the job through the same hook; the waiting try then fails retryably."""
    op, ctx = _op(), fake_context(run_id="manual__kill")
    assert "ray_conn_id" in RayTrainOperator.template_fields
    errors: list[BaseException] = []

    def run():
        try:
            op.execute(ctx)
        except BaseException as exc:  # noqa: BLE001 - checked below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not api.jobs and time.monotonic() < deadline:
        time.sleep(0.05)
    (sid,) = api.jobs
    api.status(sid, "RUNNING")
    while op._submission_id != sid and time.monotonic() < deadline:
        time.sleep(0.05)
    hook = op.hook
    op.on_kill()
    thread.join(30)
    assert op.hook is hook  # cached: the same hook (and client) as the waiting try's
    assert ("POST", f"/api/jobs/{sid}/stop", f"Bearer {TOKEN}") in api.seen
    assert (op._jobs_dir(ctx) / f"{sid}.stop_requested").read_text().startswith("stop requested by task train")
    assert len(errors) == 1 and isinstance(errors[0], AirflowException)
    assert not isinstance(errors[0], AirflowFailException) and "ended STOPPED" in str(errors[0])


def test_deferrable_defaults_from_the_operators_default_deferrable_option():
    from airflow.sdk import conf

    assert _op().deferrable is conf.getboolean("operators", "default_deferrable", fallback=False)
    assert _op(deferrable=True).deferrable is True
    code = ("from gd_provider.operators.training import RayTrainOperator as O; import inspect; "
            "print(inspect.signature(O.__init__).parameters['deferrable'].default)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__OPERATORS__")}
    root = Path(__file__).resolve().parents[2]
    on = subprocess.run([sys.executable, "-c", code], env={**env, "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": "True"},
                        capture_output=True, text=True, check=True, cwd=root)
    assert on.stdout.strip().splitlines()[-1] == "True"
    off = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=root)
    assert off.stdout.strip().splitlines()[-1] == "False"  # the fallback when the option is not set
