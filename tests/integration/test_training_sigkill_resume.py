"""A ``RayTrainWorker`` process SIGKILLed (by pid, from outside, as the OOM killer or a node loss would) after 4
of 10 epochs: training resumes from epoch 4's checkpoint with no finished epoch redone - inside the task when
the spec allows restarts (``max_failures: 2``), and with the default (no restarts) when the failed task is
cleared and run again (the same run name: the rerun resumes the run's checkpoints). One local Ray instance
(``init_local_ray``, as the task starts it) serves both, to keep the module short."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from gd_provider.core.data import write_dataset
from gd_provider.demo import schema as S
from gd_provider.demo.schema import training_spec as demo_training_spec
from gd_provider.operators.training import RayTrainOperator

from ..support import FakeTI, fake_context
from .test_training import synthetic_transactions

pytestmark = pytest.mark.integration
EPOCHS, KILL_AFTER = 10, 4


class _Killer(threading.Thread):
    """SIGKILLs the RayTrainWorker once the run's checkpoint of epoch ``KILL_AFTER`` is on disk."""

    def __init__(self, run_root: Path) -> None:
        super().__init__(daemon=True)
        self.run_root, self.killed, self.checkpoints_at_kill = run_root, [], None
        self.done = threading.Event()

    def _epochs_checkpointed(self) -> int:
        return len(list(self.run_root.glob("*/checkpoint_*/history.json")))

    def run(self) -> None:
        deadline = time.monotonic() + 240
        while not self.done.is_set() and time.monotonic() < deadline:
            if self._epochs_checkpointed() >= KILL_AFTER:
                for proc in psutil.Process().children(recursive=True):
                    try:
                        if "RayTrainWorker" in " ".join(proc.cmdline()[:1]):
                            proc.send_signal(signal.SIGKILL)
                            self.killed.append(proc.pid)
                    except psutil.Error:
                        continue
                if self.killed:
                    time.sleep(1.0)
                    self.checkpoints_at_kill = self._epochs_checkpointed()
                    return
            time.sleep(0.05)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("sigkill") / "train.parquet"
    return write_dataset(
        synthetic_transactions(12000), str(path), sort_by=[S.TIMESTAMP, S.TRANSACTION_ID],
        entity_keys=list(S.ENTITY_KEYS), timestamp_column=S.TIMESTAMP, label_column=S.LABEL,
    ).to_dict()


def _train(dataset: dict, run_id: str, **spec) -> object:
    """One try of the task ``train`` of DAG run ``run_id`` (a fresh operator, as a new task process)."""
    op = RayTrainOperator(task_id="train", dataset=dataset, model_name="m",
                          spec=demo_training_spec(epochs=EPOCHS, batch_size=64, seed=3, **spec).to_dict())
    ctx = fake_context(run_id=run_id, ti=FakeTI(task_id="train"))
    return op._train_locally(ctx, op._resolve_spec(ctx))


def _assert_resumed_from_epoch_4(result, killer: _Killer) -> None:
    assert killer.killed, "no RayTrainWorker was killed"
    assert killer.checkpoints_at_kill == KILL_AFTER, f"killed after {killer.checkpoints_at_kill} epochs, not 4"
    assert result.status == "completed", result.error
    resumes = result.run_state["resumes"]
    assert [r["from_epoch"] for r in resumes] == [KILL_AFTER], resumes
    assert [h["epoch"] for h in result.history] == list(range(1, EPOCHS + 1))  # each epoch once: none redone
    per_epoch = result.history[0]["steps"]
    assert result.steps["step"] == list(range(1, EPOCHS * per_epoch + 1))  # no step trained twice in the record


def test_sigkilled_worker_resumes_inside_the_task_with_max_failures_2(local_ray, gd_home, dataset):
    run_root = gd_home / "runs" / "test_dag" / "n1" / "ray"
    killer = _Killer(run_root)
    killer.start()
    try:
        result = _train(dataset, "n1", max_failures=2)
    finally:
        killer.done.set()
    _assert_resumed_from_epoch_4(result, killer)
    assert result.health["restarts"] == 1


def test_sigkilled_worker_resumes_when_the_failed_task_is_cleared(local_ray, gd_home, dataset):
    run_root = gd_home / "runs" / "test_dag" / "n2" / "ray"
    killer = _Killer(run_root)
    killer.start()
    try:
        first = _train(dataset, "n2")  # default max_failures 0: the try fails
    finally:
        killer.done.set()
    assert killer.killed and first.status == "failed", (first.status, first.error)
    again = _train(dataset, "n2")  # Clear `train`: the next try, same DAG run
    _assert_resumed_from_epoch_4(again, killer)
    assert json.loads(json.dumps(again.run_state["resumes"]))[0]["from_epoch"] == KILL_AFTER
