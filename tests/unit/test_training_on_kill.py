"""on_kill waits (briefly) until the stopped Ray job has left RUNNING, so the next try of a task cleared
while it trained finds the job STOPPED and resubmits it instead of adopting a job that is about to stop."""

from __future__ import annotations

import time

from gd_provider.core.training.spec import TrainingSpec
from gd_provider.operators import training
from gd_provider.operators.training import RayTrainOperator

from .test_ray_jobs import FakeJobs


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
                            spec=TrainingSpec.for_demo(epochs=1).to_dict())


def test_on_kill_waits_until_the_job_has_stopped():
    op, client = _op(), SlowStop({"gd-k": "RUNNING"}, running_polls=3)
    op._job_client, op._submission_id = client, "gd-k"
    op.on_kill()
    assert client.stopped == ["gd-k"] and client.jobs["gd-k"] == "STOPPED" and client.polls == 4


def test_on_kill_gives_up_waiting_before_airflow_kills_the_task(monkeypatch):
    monkeypatch.setattr(training, "ON_KILL_WAIT_S", 0.3)
    op, client = _op(), SlowStop({"gd-k": "RUNNING"}, running_polls=10**6)
    op._job_client, op._submission_id = client, "gd-k"
    t0 = time.monotonic()
    op.on_kill()
    assert client.stopped == ["gd-k"] and client.jobs["gd-k"] == "RUNNING"
    assert 0.3 <= time.monotonic() - t0 < 2.0
