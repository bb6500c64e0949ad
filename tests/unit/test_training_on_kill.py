"""on_kill waits (briefly) until the stopped Ray job has left RUNNING, so the next try of a task cleared
while it trained finds the job STOPPED and resubmits it instead of adopting a job that is about to stop."""

from __future__ import annotations

import pytest

from gd_provider.demo.schema import training_spec as demo_training_spec
from gd_provider.hooks import ray as ray_hooks
from gd_provider.operators import training
from gd_provider.operators.training import RayTrainOperator

from .test_ray_jobs import FakeJobs, bind


class SlowStop(FakeJobs):
    """Ray's stop is fire-and-forget: the job reads RUNNING for a few polls after stop_job."""

    def __init__(self, jobs, running_polls: int) -> None:
        super().__init__(jobs)
        self.running_polls = running_polls
        self.polls = 0

    def stop_job(self, sid):
        self.stopped.append(sid)
        return True

    def get_job_status(self, sid):
        self.polls += 1
        if self.stopped and self.polls > self.running_polls:
            self.jobs[sid] = "STOPPED"
        return self.jobs[sid]


def _op() -> RayTrainOperator:
    return RayTrainOperator(task_id="train", dataset={"uri": "/nowhere.parquet"}, model_name="m",
                            spec=demo_training_spec(epochs=1).to_dict())


def test_on_kill_waits_until_the_job_has_stopped(monkeypatch):
    op, client = _op(), bind(monkeypatch, SlowStop({"gd-k": "RUNNING"}, running_polls=3))
    op._submission_id = "gd-k"
    op.on_kill()
    assert client.stopped == ["gd-k"] and client.jobs["gd-k"] == "STOPPED" and client.polls == 4


class FakeClock:
    """The hook's ``time`` on a simulated clock: ``sleep`` advances it at once, so the bound on_kill keeps is
    checked exactly, whatever the load on the machine; a wait far past any sane bound fails the test."""

    def __init__(self, limit_s: float = 60.0) -> None:
        self.now, self.limit_s, self.sleeps = 1000.0, limit_s, 0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds
        assert self.now - 1000.0 < self.limit_s, "on_kill keeps waiting past its bound"


def test_on_kill_gives_up_waiting_before_airflow_kills_the_task(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(ray_hooks, "time", clock)
    op, client = _op(), bind(monkeypatch, SlowStop({"gd-k": "RUNNING"}, running_polls=10**6))
    op._submission_id = "gd-k"
    op.on_kill()
    assert client.stopped == ["gd-k"] and client.jobs["gd-k"] == "RUNNING"
    waited = clock.now - 1000.0
    # it polled for its whole budget, then gave up - well inside the 5 s Airflow allows after SIGTERM
    assert training.ON_KILL_WAIT_S <= waited < 5.0, waited
    assert client.polls >= 2 and client.polls == clock.sleeps


def _remote_op() -> RayTrainOperator:
    return RayTrainOperator(task_id="train", dataset={"uri": "/nowhere.parquet", "sha256": "0" * 64, "rows": 10},
                            model_name="m", spec=demo_training_spec(epochs=1).to_dict(), poll_interval=0.01)


def test_a_new_try_never_adopts_a_job_an_earlier_try_is_stopping(gd_home, monkeypatch):
    """Clear during training: the killed try wrote the stop marker, but the stop has not landed yet when the
    new try looks. The new try waits for the job to end and resubmits, instead of adopting a job that is
    about to stop under it."""
    from tests.support import fake_context

    ctx = fake_context()
    killed = _remote_op()
    jobs_dir = killed._jobs_dir(ctx)
    killed._jobs_dir_path = jobs_dir
    base = killed._base_submission_id(ctx)
    client = bind(monkeypatch, SlowStop({}, running_polls=10**6))
    assert killed._adopt_or_submit(ctx, killed._resolve_spec(ctx), jobs_dir) == (base, "PENDING")
    client.jobs[base] = "RUNNING"
    killed._submission_id = base
    training.ON_KILL_WAIT_S, saved = 0.05, training.ON_KILL_WAIT_S
    try:
        killed.on_kill()  # SIGTERM: stop requested, still RUNNING when on_kill returns
    finally:
        training.ON_KILL_WAIT_S = saved
    assert killed._stop_marker(jobs_dir, base).is_file() and client.jobs[base] == "RUNNING"

    client.running_polls = client.polls + 2  # the stop lands two polls later
    new_try = _remote_op()
    new_try._jobs_dir_path = jobs_dir
    sid, status = new_try._adopt_or_submit(ctx, new_try._resolve_spec(ctx), jobs_dir)
    assert (sid, status) == (f"{base}-r2", "PENDING") and client.jobs[base] == "STOPPED"


def test_a_job_that_will_not_stop_is_neither_adopted_nor_duplicated(gd_home, monkeypatch):
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    from tests.support import fake_context

    monkeypatch.setattr(ray_hooks, "STOPPING_WAIT_S", 0.1)
    ctx = fake_context()
    op = _remote_op()
    jobs_dir = op._jobs_dir(ctx)
    base = op._base_submission_id(ctx)
    client = bind(monkeypatch, SlowStop({base: "RUNNING"}, running_polls=10**6))
    op._stop_marker(jobs_dir, base).write_text("stop requested\n")
    with pytest.raises(AirflowException, match="still RUNNING .* not adopting it") as err:
        op._adopt_or_submit(ctx, op._resolve_spec(ctx), jobs_dir)
    assert not isinstance(err.value, AirflowFailException)  # retryable
    assert client.submitted == [] and client.stopped == [base]
