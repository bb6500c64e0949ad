"""Registry writes that survive retries and crashes: faults injected around every request of the registry steps.

A real ``mlflow server`` (SQLite backend, one per module) behind :class:`tests.faultproxy.FaultProxy`, reached by
the operators the DAGs use through an ``mlflow_default`` connection pointing at the proxy. No mocked client.

For each step — register (the model's first version and a later night's), promote, the smoke test's read of
the champion, the automatic rollback and the manual rollback DAG's task — the requests it makes are recorded on
a clean run first; then, for every one of them, a fresh registered model is put in the state the step starts
from, a fault is armed on that request and the step runs:

* ``down``: the server is unreachable from that request on (5xx before forwarding);
* ``504`` (writes): the server carries the request out, the client sees a gateway timeout;
* ``crash`` (writes): the server carries it out and dies before answering;
* ``dup`` (creates): a gateway sends it to the server twice.

The step either succeeds or fails retryably (never a refusal or a skip). Then the server is back and the
step is run again, as Airflow's retry or Clear + rerun would, and: exactly one version for the run, the
champion where the gate (or the rollback) said, one audit entry per promotion and rollback, no pending
intent, no alias ever deleted. A request the steps make in a later version is covered without editing this
file: the cases are the recorded requests.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from gd_provider.core import registry
from gd_provider.core.data import write_dataset
from tests.harness import stack

from ..faultproxy import Fault, FaultProxy
from ..support import AmountScorer, FakeTI, fake_context

pytestmark = pytest.mark.integration

DAG = "faults_dag"
NIGHT1, NIGHT2 = f"{DAG}/scheduled__night1", f"{DAG}/scheduled__night2"
ALIAS = "champion"
RESULTS: list[dict[str, Any]] = []  # every case, for the report (GD_FAULT_REPORT=<file> writes it)


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Any:
    root = tmp_path_factory.mktemp("mlflow_faults")
    port = stack.free_port()
    svc = stack.start_service("mlflow", stack.mlflow_server_argv(f"sqlite:///{root / 'mlflow.db'}",
                                                                 root / "artifacts", port),
                              env=stack.quiet_env(), log_dir=root)
    url = f"http://127.0.0.1:{port}"
    try:
        stack.wait_mlflow(url, svc, timeout_s=180)
        yield url
    finally:
        svc.stop(grace_s=10)


@pytest.fixture(scope="module")
def proxy(server) -> Any:
    p = FaultProxy(server)
    yield p
    p.close()
    report = os.environ.get("GD_FAULT_REPORT")
    if report:
        Path(report).write_text(json.dumps(RESULTS, indent=1))


@pytest.fixture(scope="module")
def env(proxy, tmp_path_factory) -> Any:
    """Operators reach MLflow through the proxy (``mlflow_default``); the client retries each request twice
    at once (no back-off, so a case takes milliseconds, not minutes)."""
    home = tmp_path_factory.mktemp("gd_home_faults")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", json.dumps(
            {"conn_type": "mlflow", "host": "127.0.0.1", "port": proxy.port, "schema": "http"}))
        mp.setenv("GD_PROVIDER_HOME", str(home))
        mp.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        mp.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
        mp.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")
        mp.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        yield home


@dataclass(frozen=True)
class World:
    direct: Any  # a client straight to the server: setup and assertions, never faulted
    model_uri: str
    run_id: str
    model_id: str | None
    dataset: dict[str, Any]


@pytest.fixture(scope="module")
def world(server, env) -> World:
    import mlflow
    from mlflow.store.artifact.utils.models import _parse_model_id_if_present

    client = registry.MlflowConfig(tracking_uri=server).client()
    exp = registry.ensure_experiment(client, "faults", None)
    with mlflow.start_run(experiment_id=exp) as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=AmountScorer(), pip_requirements=["mlflow"])
    mlflow.set_tracking_uri(None)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"transaction_id": [f"t{i}" for i in range(200)], "amount": rng.gamma(2.0, 60.0, 200),
                          "is_fraud": (rng.random(200) < 0.05).astype("int64")})
    dataset = write_dataset(frame, str(env / "train.parquet"), feature_refs=["card_stats:amount"]).to_dict()
    return World(client, info.model_uri, run.info.run_id, _parse_model_id_if_present(info.model_uri), dataset)


# ----------------------------------------------------------------------------------------------- the steps
def _entry(seq: int, frm: str, to: str, run: str) -> str:
    return json.dumps({"seq": seq, "at": "2026-02-01T00:00:00+00:00", "action": "promote", "alias": ALIAS,
                       "from": frm, "to": to, "actor": "scheduler", "reason": f"gate blessed {run}", "dag_run": run})


def _setup(w: World, name: str, *, versions: int, champion: str | None) -> None:
    """The registry as earlier nights left it (straight to the server, a handful of requests): night1's v1
    champion with its audit entry; with ``versions=2`` night2's v2 too, champion when ``champion == "2"``."""
    c = w.direct
    tags = {"gd.managed": "true", f"{registry.AUDIT_PREFIX}000001": _entry(1, "none", "1", NIGHT1)}
    if champion == "2":
        tags[f"{registry.AUDIT_PREFIX}000002"] = _entry(2, "1", "2", NIGHT2)
    c.create_registered_model(name, tags=tags)
    for n, run in ((1, NIGHT1), (2, NIGHT2))[:versions]:
        c.create_model_version(name, w.model_uri, run_id=w.run_id, model_id=w.model_id, tags={
            registry.RUN_KEY_TAG: run, registry.PREVIOUS_CHAMPION_TAG: "none" if n == 1 else "1"})
    if champion:
        c.set_registered_model_alias(name, ALIAS, champion)


GATE = {"blessed": True, "reasons": ["roc_auc 0.90 >= 0.80: pass"], "champion_version": "1",
        "holdout_sha256": "abc", "holdout_rows": 10, "challenger_metrics": {"roc_auc": 0.9}}
PROMOTION = {"version": "2", "alias": ALIAS, "previous_champion": "1", "moved": True}


@dataclass(frozen=True)
class Step:
    """One registry step of the DAGs: the state it starts from, how to run it (a fresh operator each time, as
    a rerun has) and the state every run must end in."""

    name: str
    versions: int
    champion: str | None
    run: Callable[[World, str], Any]
    expect_champion: str | None
    expect_actions: tuple[tuple[str, str, str], ...]  # (action, from, to) of the audit trail's changes
    run_key: str | None = None  # the DAG run whose versions must be exactly one
    model_exists: bool = True


def _register(w: World, name: str, run_id: str = "scheduled__night2") -> Any:
    from gd_provider.operators.registry import RegisterModelOperator

    training = {"model_uri": w.model_uri, "mlflow_run_id": w.run_id, "spec": {"seed": 7},
                "health": {"status": "completed", "nonfinite_steps": 0}}
    op = RegisterModelOperator(task_id="register", dataset=w.dataset, training=training, gate=GATE, model_name=name)
    return op.execute(fake_context(run_id=run_id, dag_id=DAG))


def _promote(w: World, name: str) -> Any:
    from gd_provider.operators.registry import PromoteModelOperator

    op = PromoteModelOperator(task_id="promote", model={"name": name, "version": "2"}, gate=GATE)
    return op.execute(fake_context(run_id="scheduled__night2", dag_id=DAG, user=None))


def _smoke(w: World, name: str) -> Any:
    from gd_provider.operators.registry import ModelSmokeTestOperator

    op = ModelSmokeTestOperator(task_id="smoke_test", dataset=w.dataset, model_name=name, canary_rows=50,
                                latency_probes=3, max_p95_latency_ms=5000, max_positive_rate_change=None)
    ti = FakeTI({("promote", "return_value"): {"name": name, **PROMOTION}})
    return op.execute(fake_context(run_id="scheduled__night2", dag_id=DAG, ti=ti))


def _rollback(w: World, name: str) -> Any:
    from gd_provider.operators.registry import RollbackModelOperator

    op = RollbackModelOperator(task_id="rollback", reason="smoke test failed")
    ti = FakeTI({("promote", "return_value"): {"name": name, **PROMOTION}})
    return op.execute(fake_context(run_id="scheduled__night2", dag_id=DAG, ti=ti, user=None))


def _manual_rollback(w: World, name: str) -> Any:
    """The task of the manual rollback DAG (:func:`gd_provider.config_dags.build_manual_rollback_dag`), its
    templates rendered as the form submits them."""
    from gd_provider.operators.registry import RollbackModelOperator

    op = RollbackModelOperator(task_id="rollback", promote_task_id=None, model_name=name, to_version="previous",
                               alias=ALIAS, reason="bad predictions reported by the fraud team")
    return op.execute(fake_context(run_id="manual__2026-02-02", dag_id="gd_manual_rollback", user="alice"))


P1, P2 = ("promote", "none", "1"), ("promote", "1", "2")
STEPS = {
    "register_first": Step("register_first", 0, None, lambda w, n: _register(w, n, "scheduled__night1"), None, (),
                           run_key=NIGHT1, model_exists=False),
    "register": Step("register", 1, "1", _register, "1", (P1,), run_key=NIGHT2),
    "promote": Step("promote", 2, "1", _promote, "2", (P1, P2)),
    "smoke_test": Step("smoke_test", 2, "2", _smoke, "2", (P1, P2)),
    "rollback": Step("rollback", 2, "2", _rollback, "1", (P1, P2, ("rollback", "2", "1"))),
    "manual_rollback": Step("manual_rollback", 2, "2", _manual_rollback, "1", (P1, P2, ("rollback", "2", "1"))),
}


# ----------------------------------------------------------------------------------------------- recording
_counter = iter(range(1, 1_000_000))
_PREFIX = os.urandom(3).hex()  # names never collide with another module's on a shared server


def _fresh(w: World, step: Step) -> str:
    name = f"f{_PREFIX}_{next(_counter)}_{step.name}"
    if step.model_exists:
        _setup(w, name, versions=step.versions, champion=step.champion)
    return name


_RECORDED: dict[str, list[tuple[str, str]]] = {}


def recorded(w: World, proxy: FaultProxy, step: Step) -> list[tuple[str, str]]:
    """The requests ``step`` makes on a clean run: (method, path)."""
    if step.name not in _RECORDED:
        name = _fresh(w, step)
        proxy.heal()
        proxy.clear_log()
        step.run(w, name)
        _RECORDED[step.name] = [(r.method, r.path) for r in proxy.log]
        problems = _check(w, proxy, step, name)
        assert not problems, f"{step.name} without a fault: {problems}"
    return _RECORDED[step.name]


# MLflow's client asks the server what it supports once per process: not a registry request, and not made
# again in the cases after the recording
PROBES = ("/api/3.0/mlflow/server-info",)


def cases(requests: list[tuple[str, str]], mode: str) -> list[Fault]:
    """One fault per recorded request that ``mode`` applies to, each on the n-th request with its method and
    path (the n-th occurrence, counted from the step's start)."""
    out, seen = [], {}
    for method, path in requests:
        if path in PROBES:
            continue
        seen[(method, path)] = nth = seen.get((method, path), 0) + 1
        write = method != "GET"
        if mode == "down" or (mode in ("504", "crash") and write) or (mode == "dup" and path.endswith("/create")):
            out.append(Fault(method, re.escape(path), nth, mode))
    return out


# ----------------------------------------------------------------------------------------------- checks
def _check(w: World, proxy: FaultProxy, step: Step, name: str, result: Any = None) -> list[str]:
    """What must hold after a step and its rerun; the problems found (empty: all good)."""
    c = w.direct
    problems = []
    model = c.get_registered_model(name)
    champion = model.aliases.get(ALIAS)
    expected_champion = step.expect_champion
    if step.name == "register_first":
        expected_champion = None
    if champion != expected_champion:
        problems.append(f"champion v{champion}, expected v{expected_champion}")
    trail = registry.audit_trail(c, name)
    changes = tuple((e["action"], str(e["from"]), str(e["to"])) for e in trail if e["action"] in ("promote", "rollback"))
    if changes != step.expect_actions:
        problems.append(f"audit changes {changes}, expected {step.expect_actions}")
    mine = [e for e in trail if e["action"] in ("promote", "rollback")][len(step.expect_actions) - 1:] \
        if step.name in ("promote", "rollback", "manual_rollback") else []
    why = {"promote": "gate blessed the challenger: roc_auc 0.90 >= 0.80: pass", "rollback": "smoke test failed",
           "manual_rollback": "bad predictions reported by the fraud team"}
    for e in mine:  # this step's entry, also when a rerun wrote it from the intent: who, why, which run
        who = ("alice", "gd_manual_rollback/manual__2026-02-02") if step.name == "manual_rollback" \
            else ("scheduler", NIGHT2)
        if (e.get("actor"), e.get("dag_run"), e.get("reason")) != (*who, why[step.name]):
            problems.append(f"audit entry {e} is not by {who} for {why[step.name]!r}")
    pending = [k for k in model.tags if k.startswith("gd.intent.")]
    if pending:
        problems.append(f"pending intents left: {pending}")
    if step.run_key:
        versions = [v.version for v in c.search_model_versions(
            f"name = '{name}' and tags.`{registry.RUN_KEY_TAG}` = '{step.run_key}'")]
        if len(versions) != 1:
            problems.append(f"{len(versions)} versions for {step.run_key}: {sorted(versions)}")
        elif result is not None and str(result["version"]) != str(versions[0]):
            problems.append(f"the rerun returned v{result['version']}, the run's version is v{versions[0]}")
    deleted = [r for r in proxy.log if r.method == "DELETE" and r.path.endswith("/registered-models/alias")
               and r.forwarded]
    if deleted:
        problems.append(f"an alias was deleted: {[r.text for r in deleted]}")
    return problems


def run_case(w: World, proxy: FaultProxy, step: Step, fault: Fault, caplog: Any) -> dict[str, Any]:
    name = _fresh(w, step)
    caplog.clear()
    proxy.clear_log()
    proxy.arm(fault)
    first: str
    problems: list[str] = []
    try:
        step.run(w, name)
        first = "succeeded"
    except (AirflowFailException, AirflowSkipException) as exc:  # a transport fault is never a refusal or a skip
        first = f"refused: {exc}"
        problems.append(f"the faulted run was refused or skipped, so Airflow would not retry it: {exc}")
    except Exception as exc:
        first = f"failed: {type(exc).__name__}"
    fired = fault.fired
    proxy.heal()
    try:
        result = step.run(w, name)  # Airflow's retry, or Clear + rerun
    except Exception as exc:
        result = None
        problems.append(f"the rerun failed: {type(exc).__name__}: {exc}")
    problems += _check(w, proxy, step, name, result)
    path = fault.path.replace("\\", "")
    if fault.mode == "dup" and path.endswith("/model-versions/create"):
        # the second version is a duplicate: removed, and said so in the log and the audit trail
        removed = [e for e in registry.audit_trail(w.direct, name) if e["action"] == "duplicate_removed"]
        expected = [(str(step.versions + 2), str(step.versions + 1), True)]  # (removed, kept, deleted)
        if [(e["version"], e["kept"], e["deleted"]) for e in removed] != expected:
            problems.append(f"duplicate_removed audit entries: {removed}")
        if not any("reached the registry twice" in r.getMessage() for r in caplog.records):
            problems.append("no warning about the duplicate in the log")
    row = {"step": step.name, "request": f"{fault.method} {path} #{fault.nth}",
           "mode": fault.mode, "fired": fired, "first_run": first, "problems": problems}
    RESULTS.append(row)
    return row


@pytest.mark.parametrize("mode", ["down", "504", "crash", "dup"])
@pytest.mark.parametrize("step", list(STEPS))
def test_a_fault_at_any_request_then_a_rerun_leaves_the_registry_right(world, proxy, step, mode, caplog):
    requests = recorded(world, proxy, STEPS[step])
    assert requests, f"{step} made no request through the proxy: is mlflow_default pointed at it?"
    faults = cases(requests, mode)
    if not faults:
        pytest.skip(f"{step} makes no request that {mode!r} applies to")
    caplog.set_level(logging.WARNING, logger="gd_provider")
    rows = [run_case(world, proxy, STEPS[step], fault, caplog) for fault in faults]
    assert all(r["fired"] for r in rows), [r for r in rows if not r["fired"]]
    bad = [r for r in rows if r["problems"]]
    assert not bad, "\n".join(f"{r['request']} [{r['mode']}] first run {r['first_run']}: {r['problems']}" for r in bad)


def test_the_manual_rollback_dags_task_is_retried_to_settle_its_change(tmp_path):
    """The manual rollback DAG's task (the operator the cases above run as ``manual_rollback``) is retried by
    Airflow after a transport failure, so an interrupted rollback is completed without a person clearing it."""
    from gd_provider.config_dags import build_manual_rollback_dag
    from gd_provider.operators.registry import RollbackModelOperator

    task = build_manual_rollback_dag(tmp_path).get_task("rollback")
    assert isinstance(task, RollbackModelOperator) and task.promote_task_id is None
    assert task.retries >= 1


def test_an_interrupted_rollback_is_completed_by_the_next_promotion_in_its_authors_name(world, proxy):
    """The next change of the alias settles a pending one, whoever makes it: a manual rollback whose audit
    write never arrived is written by the next night's promotion with the rollback's who and why."""
    from gd_provider.operators.registry import PromoteModelOperator

    w, c = world, world.direct
    name = _fresh(w, STEPS["manual_rollback"])
    c.create_model_version(name, w.model_uri, run_id=w.run_id, model_id=w.model_id,
                           tags={registry.RUN_KEY_TAG: f"{DAG}/scheduled__night3"})
    proxy.arm(Fault("POST", re.escape("/api/2.0/mlflow/registered-models/set-tag"), 2, "down"))  # the audit write
    with pytest.raises(Exception, match="failed talking to MLflow"):
        _manual_rollback(w, name)
    proxy.heal()
    assert registry.get_alias_version(c, name, ALIAS) == "1"  # moved; its entry not written, its intent pending
    assert registry.pending_change(c, name, ALIAS)["actor"] == "alice"
    op = PromoteModelOperator(task_id="promote", model={"name": name, "version": "3"},
                              gate={**GATE, "champion_version": "1"})
    op.execute(fake_context(run_id="scheduled__night3", dag_id=DAG, user=None))
    trail = [e for e in registry.audit_trail(c, name) if e["action"] in ("promote", "rollback")]
    assert [(e["action"], e["from"], e["to"], e["actor"]) for e in trail] == [
        ("promote", "none", "1", "scheduler"), ("promote", "1", "2", "scheduler"), ("rollback", "2", "1", "alice"),
        ("promote", "1", "3", "scheduler")]
    assert trail[2]["reason"] == "bad predictions reported by the fraud team" and trail[2]["completed"]
    assert registry.get_alias_version(c, name, ALIAS) == "3" and registry.pending_change(c, name, ALIAS) is None
