"""A watchdog for a test session: when the pytest process dies - however it dies (SIGTERM from ``timeout`` or
a CI cancel, a closed terminal, SIGKILL) - every process it started is killed, also those in their own process
group or session (``mlflow server`` trees, a ``ray start`` head, Airflow's scheduler and its workers).

``python tests/reaper.py <pytest pid>`` polls the pytest process's descendants once a second and remembers them
(pid and start time, so a reused pid is never killed). When pytest is gone it kills what it remembered that is
still alive, and what those started since. ``tests/conftest.py`` starts one per session; a session that ends
normally stops its services itself and the reaper finds nothing left.
"""

from __future__ import annotations

import os
import signal
import sys
import time

POLL_S = 1.0


def _table() -> dict[int, tuple[int, str]]:
    """pid → (ppid, start time) of every live process (Linux /proc); zombies are left out."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            out[int(entry)] = (int(fields[1]), fields[19])
    return out


def _descendants(roots: set[int], table: dict[int, tuple[int, str]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def reap(watched: int, poll_s: float = POLL_S) -> int:
    """Wait for ``watched`` to die, then kill what it left behind; returns how many processes were killed."""
    me = os.getpid()
    known: dict[int, str] = {}
    while True:
        table = _table()
        if watched not in table:
            break
        for pid in _descendants({watched}, table) - {me}:
            known.setdefault(pid, table[pid][1])
        time.sleep(poll_s)
    killed = 0
    for _ in range(3):  # what was remembered, then anything those started meanwhile
        table = _table()
        alive = {pid for pid, start in known.items() if pid in table and table[pid][1] == start}
        alive |= _descendants(alive, table)
        alive.discard(me)
        if not alive:
            break
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.5)
    return killed


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C to the terminal's group must not stop the watchdog
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    n = reap(int(sys.argv[1]))
    if n:
        print(f"gd test reaper: killed {n} process(es) left by pytest pid {sys.argv[1]}", file=sys.stderr)
