"""Killing a task that trains in-task (embedded Ray): Airflow 3.3's SIGTERM handler only calls ``on_kill``,
so ``RayTrainOperator.on_kill`` must itself unwind the training - Ray Train stopped, the private Ray
instance shut down, every Ray process gone - long before Airflow's SIGKILL would (5 s later)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from gd_provider.core.data import write_dataset
from gd_provider.demo import schema as S

from .test_training import synthetic_transactions

pytestmark = pytest.mark.integration

CHILD = r"""
import json, signal, sys
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from gd_provider.core.training.spec import TrainingSpec
from gd_provider.operators.training import RayTrainOperator
from tests.support import fake_context
from gd_provider.demo.schema import training_spec as demo_training_spec

op = RayTrainOperator(task_id="train", dataset=json.loads(sys.argv[1]), model_name="m",
                      spec=demo_training_spec(epochs=500, seed=1).to_dict())
signal.signal(signal.SIGTERM, lambda signum, frame: op.on_kill())  # what Airflow's task runner does
ctx = fake_context()
try:
    op._train_locally(ctx, op._resolve_spec(ctx))
except AirflowFailException:
    raise
except AirflowException as exc:  # retryable: a SIGTERM may be a worker shutting down
    print("TERMINATED:", exc, flush=True)
    sys.exit(3)
print("FINISHED", flush=True)
"""


AIRFLOW_SIGKILL_AFTER_S = 5.0  # airflow.sdk.execution_time.supervisor: kill(escalation_delay=5.0)


def test_sigterm_during_in_task_training_stops_ray_train_and_the_local_ray(gd_home, tmp_path):
    manifest = write_dataset(
        synthetic_transactions(3000), str(tmp_path / "train.parquet"), sort_by=[S.TIMESTAMP, S.TRANSACTION_ID],
        entity_keys=list(S.ENTITY_KEYS), timestamp_column=S.TIMESTAMP, label_column=S.LABEL,
    ).to_dict()
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(manifest)], cwd=root, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ray_dir = gd_home / "runs" / "test_dag" / "manual__test" / "ray"
        deadline = time.monotonic() + 240
        while not list(ray_dir.glob("*/checkpoint_*")):  # the workers are training
            assert child.poll() is None, child.communicate()[0]
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.5)
        ray_processes = psutil.Process(child.pid).children(recursive=True)
        assert ray_processes, "the local Ray instance runs as children of the task process"
        t0 = time.monotonic()
        child.send_signal(signal.SIGTERM)
        try:
            # Airflow's supervisor sends SIGKILL 5 s after SIGTERM (escalation_delay); twice that for a noisy
            # machine. A process still alive then is killed as Airflow would, leaving Ray behind: a failure.
            out, _ = child.communicate(timeout=2 * AIRFLOW_SIGKILL_AFTER_S)
        except subprocess.TimeoutExpired:
            child.kill()
            pytest.fail(f"the task process was still running {2 * AIRFLOW_SIGKILL_AFTER_S:.0f} s after SIGTERM "
                        f"(Airflow SIGKILLs it after {AIRFLOW_SIGKILL_AFTER_S:.0f} s): "
                        + child.communicate()[0][-4000:])
        stopped_after = time.monotonic() - t0
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 3 and "TERMINATED: killed while training in-task" in out, out[-3000:]
    assert "FINISHED" not in out
    gone, alive = psutil.wait_procs(ray_processes, timeout=20)
    assert not alive, f"Ray processes left after the kill: {[p.pid for p in alive]}"
    print(f"stopped {stopped_after:.1f} s after SIGTERM")
