"""System tests: the stack's parts as real processes (PostgreSQL, Redis, ``mlflow server``, the Airflow
api-server / scheduler / dag-processor / triggerer). A PostgreSQL server must run already (``.ci/run``
starts it; the tests create their own databases in it) and a ``redis-server`` binary must be installed (the
tests start their own, password-protected, on a free port); without them the tests skip, unless
``GD_REQUIRE_SERVICES=1`` (set by CI) makes that a failure.

A failing test gets the tails of the service logs attached to its report; the services' start-up
timings are printed in the terminal summary.
"""

from __future__ import annotations

import pytest

TIMINGS: dict[str, float] = {}
LOG_SOURCES: list = []  # callables returning text to attach to a failing test's report


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and LOG_SOURCES:
        for source in LOG_SOURCES:
            try:
                rep.sections.append(("service logs", source()))
            except Exception as exc:  # never hide the real failure
                rep.sections.append(("service logs", f"<could not read logs: {exc!r}>"))


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.section("system stack timings (s)")
        for name, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{name:<40} {seconds:7.1f}")
