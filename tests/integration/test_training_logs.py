"""A local training's log read the way a person reads the training task's log (issue 14), with another Ray
running on the host: one INFO line per epoch and one at the end, Ray's own output at DEBUG through Python
logging (never on the process's stderr, which an Airflow task logs at ERROR line by line), and no
``PlacementGroupCleaner ... Found multiple active Ray instances`` traceback.

The other Ray is a ``ray start --head --block`` with its own temp dir and ports, in its own process group,
killed by process group at the end (never ``ray stop``: it would stop every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from gd_provider.core.data import write_dataset
from gd_provider.core.training.runner import run_training
from gd_provider.demo import schema as S
from gd_provider.demo.schema import training_spec as demo_training_spec

from .test_training import synthetic_transactions

pytestmark = pytest.mark.integration
PROGRESS, RAY = "gd_provider.training", "gd_provider.ray"  # the loggers a task log shows the lines under


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _processes_of(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(marker in part for part in proc.info["cmdline"] or ()):
                found.append(proc)
    return found


@pytest.fixture
def another_ray():
    """A second Ray instance on this host, started first (its GCS is what the first one's helpers would find)."""
    temp_dir = tempfile.mkdtemp(prefix="gdr", dir="/tmp")  # short: Ray's socket paths must fit
    ray_cli = Path(sys.executable).with_name("ray")
    ports = {name: _free_port() for name in ("port", "dashboard-port", "node-manager-port", "object-manager-port",
                                             "ray-client-server-port", "dashboard-agent-listen-port",
                                             "dashboard-agent-grpc-port", "metrics-export-port",
                                             "runtime-env-agent-port", "min-worker-port")}
    cmd = [str(ray_cli), "start", "--head", "--block", f"--temp-dir={temp_dir}", "--num-cpus=1",
           "--include-dashboard=false", "--max-worker-port=0", "--disable-usage-stats",
           *(f"--{name}={port}" for name, port in ports.items())]
    log = open(Path(temp_dir) / "ray_start.log", "w")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    try:
        deadline = time.monotonic() + 120
        while True:
            names = {p.info["name"] for p in _processes_of(temp_dir)}
            if {"gcs_server", "raylet"} <= names:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the second Ray did not start: {(Path(temp_dir) / 'ray_start.log').read_text()}")
            time.sleep(0.5)
        yield temp_dir
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=3)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # ray start --block may linger on SIGTERM
        proc.wait(timeout=30)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_the_training_log_reads_well_with_another_ray_on_the_host(another_ray, tmp_path, caplog, capfd, monkeypatch):
    """One training run, three checks: every problem found is reported at the end (each names its item)."""
    import ray

    assert not ray.is_initialized()  # run_training starts (and stops) its own instance, as the task does
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    manifest = write_dataset(
        synthetic_transactions(2000), str(tmp_path / "train.parquet"), sort_by=[S.TIMESTAMP, S.TRANSACTION_ID],
        entity_keys=list(S.ENTITY_KEYS), timestamp_column=S.TIMESTAMP, label_column=S.LABEL,
    )
    spec = demo_training_spec(epochs=3, seed=1, device="cpu", num_workers=1, grad_clip_norm=1.0)
    caplog.set_level(logging.DEBUG, logger="gd_provider")
    capfd.readouterr()

    result = run_training(manifest, spec, storage_path=str(tmp_path / "ray"), run_name="logs")
    time.sleep(1.0)  # anything Ray would still print after shutdown
    out, err = capfd.readouterr()
    assert result.ok, result.error
    records = [(r.name, r.levelno, r.getMessage()) for r in caplog.records if r.name.startswith("gd_provider")]
    problems: list[str] = []

    # 1. one INFO line per epoch (epoch i/n, train loss, the validation metric, grad norms, clip share,
    # throughput, ETA) and one at the end, on gd_provider.training
    progress = [(level, msg) for name, level, msg in records if name == PROGRESS]
    epochs = [(level, msg) for level, msg in progress if msg.startswith("epoch ")]
    if [msg.split(":")[0] for _, msg in epochs] != ["epoch 1/3", "epoch 2/3", "epoch 3/3"]:
        problems.append(f"epoch lines: {epochs}")
    for level, msg in epochs:
        missing = [p for p in ("train_loss ", "val_roc_auc 0.", "grad-norm p50 ", " / max ", "clipped ",
                               " samples/s", "ETA ") if p not in msg]
        if level != logging.INFO or missing:
            problems.append(f"epoch line {msg!r} at {logging.getLevelName(level)} lacks {missing}")
    if not progress or progress[-1][0] != logging.INFO or not progress[-1][1].startswith("training completed in ") \
            or "3/3 epochs" not in progress[-1][1]:
        problems.append(f"summary line: {progress[-1:]}")

    # 2. Ray's own output through logging, its chatter at DEBUG; nothing on stderr (an Airflow task logs each
    # stderr line at ERROR)
    ray_lines = [(level, msg) for name, level, msg in records if name == RAY]
    if (logging.DEBUG, "Started a local Ray instance.") not in ray_lines:
        problems.append("Ray's start-up line is not a DEBUG record")
    for who in ("(RayTrainWorker pid=", "(TrainController pid="):
        if not any(level == logging.DEBUG and who in msg for level, msg in ray_lines):
            problems.append(f"no {who}...) line at DEBUG")
    errors = [r for r in records if r[1] >= logging.ERROR]
    if errors:
        problems.append(f"ERROR records: {errors}")
    for marker in ("(RayTrainWorker", "(TrainController", "(PlacementGroupCleaner", "Started a local Ray instance"):
        if marker in err or marker in out:
            problems.append(f"{marker!r} printed to the process's stderr/stdout")

    # 3. no spurious traceback from Ray Train's PlacementGroupCleaner looking the cluster up on a shared host
    # (the local instance gives its processes its own address; the driver's environment is left as it was)
    if os.environ.get("RAY_ADDRESS") is not None or os.environ.get("RAY_GCS_SERVER_PORT") is not None:
        problems.append("init_local_ray left RAY_ADDRESS / RAY_GCS_SERVER_PORT in the driver's environment")
    everything = err + out + "\n".join(msg for _, _, msg in records)
    for marker in ("Found multiple active Ray instances", "Traceback"):
        if marker in everything:
            at = everything.index(marker)
            problems.append(f"{marker!r} in the log: ...{everything[max(0, at - 300):at + 300]}...")

    assert not problems, "\n".join(problems)
