"""A test session stopped from outside leaves no process behind (issue 15).

A real pytest session (this repository's ``tests/conftest.py`` as its plugin) starts a real ``mlflow server``
through the shared ``mlflow_server`` fixture, then waits. It is stopped the two ways CI and terminals stop it:

* SIGTERM (``timeout``, a closed terminal, a CI cancel): the session ends like Ctrl-C, fixture teardown stops
  the server's whole process tree;
* SIGKILL (no teardown at all): ``tests/reaper.py`` kills what the session had started.

Either way, none of the session's processes is alive afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.reaper import _table

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

INNER = '''
import json, os, time
from pathlib import Path

from tests.reaper import _descendants, _table


def test_hold(mlflow_server):
    time.sleep(1.0)
    table = _table()
    pids = {pid: table[pid][1] for pid in _descendants({os.getpid()}, table)}
    Path(os.environ["GD_LEAK_PIDS"]).write_text(json.dumps(pids))
    time.sleep(600)
'''


def _alive(recorded: dict[str, str]) -> list[int]:
    table = _table()
    return [int(pid) for pid, start in recorded.items() if int(pid) in table and table[int(pid)][1] == start]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_stopped_session_leaves_no_process_behind(tmp_path, sig):
    inner = tmp_path / "inner_session.py"
    inner.write_text(INNER)
    pids_file = tmp_path / "pids.json"
    env = {k: v for k, v in os.environ.items() if k != "GD_TEST_REAPER"}
    env["GD_LEAK_PIDS"] = str(pids_file)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-c", os.devnull, str(inner)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not pids_file.exists():
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the inner session never started its mlflow server"
            time.sleep(0.5)
        time.sleep(0.5)
        recorded = json.loads(pids_file.read_text())
        server = [pid for pid in recorded if "mlflow" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")]
        assert server, recorded  # the server's tree is among the session's processes
        os.kill(proc.pid, sig)  # the pytest process only, as `timeout` or a CI runner signals it
        proc.wait(timeout=120)
        deadline = time.monotonic() + 30
        while (left := _alive(recorded)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, {pid: Path(f"/proc/{pid}/cmdline").read_text(errors="replace") for pid in left}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in _alive(json.loads(pids_file.read_text())) if pids_file.exists() else []:
            os.kill(pid, signal.SIGKILL)
