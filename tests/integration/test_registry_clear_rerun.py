"""Kept as the issue found it, on a real ``mlflow server`` over HTTP: Clear + rerun of ``register`` and
``promote`` of a promoted night, 9 times, gives one version, and leaves the champion and the audit trail as
they were; rerunning an older night (its release tasks, with the gate it had or re-evaluated against today's
champion) refuses to move the champion back, and says why."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import mlflow
import pytest
from airflow.sdk.exceptions import AirflowFailException

from gd_provider.core import registry
from gd_provider.core.data import write_dataset
from gd_provider.operators.registry import PromoteModelOperator, RegisterModelOperator

from ..support import AmountScorer, FakeTI, fake_context
from .test_release_operators import _frame

pytestmark = pytest.mark.integration


@pytest.fixture
def name(request) -> str:
    return "m_" + re.sub(r"\W", "_", request.node.name)


@pytest.fixture
def client(gd_home, mlflow_server, monkeypatch):
    from gd_provider.hooks.mlflow import MlflowHook

    host, port = mlflow_server.removeprefix("http://").split(":")
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT",
                       json.dumps({"conn_type": "mlflow", "host": host, "port": int(port), "schema": "http"}))
    return MlflowHook().get_conn()


def _ctx(night: int) -> dict:
    return fake_context(run_id=f"scheduled__2026-02-{night:02d}", end=datetime(2026, 2, night, tzinfo=UTC),
                        ti=FakeTI(task_id="register"))


def _night(client, gd_home, name: str, night: int, baseline: str | None) -> tuple[dict, dict]:
    """One night's training (a model logged in MLflow), its register and promote operators' arguments."""
    experiment = registry.ensure_experiment(client, name, None)
    with mlflow.start_run(experiment_id=experiment) as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=AmountScorer(), pip_requirements=["mlflow"])
    dataset = write_dataset(_frame(200, seed=night), str(gd_home / f"n{night}.parquet")).to_dict()
    training = {"model_uri": info.model_uri, "mlflow_run_id": run.info.run_id, "spec": {"seed": night},
                "health": {"status": "completed", "nonfinite_steps": 0}}
    gate = {"blessed": True, "reasons": ["roc_auc 0.9 >= 0.8: pass"], "champion_version": baseline,
            "holdout_sha256": "abc", "holdout_rows": 10, "challenger_metrics": {"roc_auc": 0.9}}
    return {"dataset": dataset, "training": training, "gate": gate, "model_name": name}, gate


def _release(args: dict, gate: dict, night: int) -> tuple[dict, dict]:
    """``register`` then ``promote`` of one night, as the DAG runs them (a try of each)."""
    registered = RegisterModelOperator(task_id="register", **args).execute(_ctx(night))
    promoted = PromoteModelOperator(task_id="promote", model={"name": args["model_name"],
                                                              "version": registered["version"]},
                                    gate=gate).execute(_ctx(night))
    return registered, promoted


def test_clear_and_rerun_register_and_promote_nine_times_changes_nothing(client, gd_home, name):
    n1, gate1 = _night(client, gd_home, name, 1, None)
    assert _release(n1, gate1, 1)[1]["moved"]
    n2, gate2 = _night(client, gd_home, name, 2, "1")
    registered, promoted = _release(n2, gate2, 2)
    assert (registered["version"], registered["created"], promoted["moved"]) == ("2", True, True)
    trail = registry.audit_trail(client, name)
    tags = dict(client.get_model_version(name, "2").tags)
    for _ in range(9):  # Clear register (with downstream) on night 2, rerun
        again, moved = _release(n2, gate2, 2)
        assert (again["version"], again["created"], moved["moved"]) == ("2", False, False)
    assert sorted(v.version for v in client.search_model_versions(f"name = '{name}'")) == ["1", "2"]
    assert registry.get_alias_version(client, name, "champion") == "2"
    assert registry.audit_trail(client, name) == trail and [(e["action"], e["to"]) for e in trail] == [
        ("promote", "1"), ("promote", "2")]
    assert dict(client.get_model_version(name, "2").tags) == tags


def test_rerunning_an_older_night_refuses_to_move_the_champion_back(client, gd_home, name):
    nights = {}
    for n in (1, 2, 3):
        nights[n] = _night(client, gd_home, name, n, None if n == 1 else str(n - 1))
        assert _release(*nights[n], n)[1]["moved"]
    trail = registry.audit_trail(client, name)
    args2, gate2 = nights[2]
    # Clear register + promote of night 2 with the gate it had: blessed v2 against v1, the champion is v3
    with pytest.raises(AirflowFailException, match=r"refused: .*compared v2 with v1, but .* is now v3"):
        _release(args2, gate2, 2)
    # Clear from evaluate: the gate re-evaluated v2 against today's champion v3 - v2 was trained on older data
    with pytest.raises(AirflowFailException, match=r"v2 was trained on data up to .* older than champion v3"):
        _release(args2, {**gate2, "champion_version": "3"}, 2)
    assert registry.get_alias_version(client, name, "champion") == "3"
    assert registry.audit_trail(client, name) == trail
    assert sorted(v.version for v in client.search_model_versions(f"name = '{name}'")) == ["1", "2", "3"]
