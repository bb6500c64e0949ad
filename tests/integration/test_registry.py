"""Registry operations against a real MLflow store (SQLite)."""

from __future__ import annotations

import json

import mlflow
import pytest

from gd_provider.core import registry

pytestmark = pytest.mark.integration


class _Constant(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return [0.5] * len(model_input)


@pytest.fixture
def mlflow_config(mlflow_backend):
    return mlflow_backend


@pytest.fixture
def client(mlflow_config):
    return mlflow_config.client()


def _name(request) -> str:
    """One registered model per test: the HTTP server is shared by the whole session."""
    return "m_" + request.node.name.replace("[", "_").replace("]", "")


def _log_model(client, mlflow_config) -> tuple[str, str]:
    exp = registry.ensure_experiment(client, "registry-test", mlflow_config.artifact_root)
    with mlflow.start_run(experiment_id=exp) as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=_Constant(), pip_requirements=["mlflow"])
    return info.model_uri, run.info.run_id


def test_register_is_idempotent_per_run_key(client, mlflow_config, request):
    name = _name(request)
    uri, run_id = _log_model(client, mlflow_config)
    v1, created1 = registry.register_model(client, name, uri, run_key="dag/run1", run_id=run_id, tags={"a": 1})
    v2, created2 = registry.register_model(client, name, uri, run_key="dag/run1", run_id=run_id, tags={"a": 2})
    v3, created3 = registry.register_model(client, name, uri, run_key="dag/run1", run_id=run_id, tags={"a": 2})
    assert (v1, created1) == ("1", True)
    assert (v2, created2) == ("1", False) and (v3, created3) == ("1", False)
    assert len(client.search_model_versions(f"name = '{name}'")) == 1
    assert client.get_model_version(name, "1").tags["a"] == "1"  # a reuse never rewrites a tag
    v4, created4 = registry.register_model(client, name, uri, run_key="dag/run2", run_id=run_id, tags={})
    assert (v4, created4) == ("2", True)


def test_promote_records_previous_champion_and_audit(client, mlflow_config, request):
    name = _name(request)
    uri, run_id = _log_model(client, mlflow_config)
    for key in ("r1", "r2"):
        registry.register_model(client, name, uri, run_key=key, run_id=run_id, tags={})
    first = registry.promote(client, name, "1", actor="scheduler", reason="first", dag_run="d/r1")
    assert first["previous_champion"] == registry.NO_CHAMPION and first["moved"]
    second = registry.promote(client, name, "2", actor="alice", reason="better", dag_run="d/r2")
    assert second["previous_champion"] == "1"
    assert registry.get_alias_version(client, name, "champion") == "2"
    assert client.get_model_version(name, "2").tags[registry.PREVIOUS_CHAMPION_TAG] == "1"
    again = registry.promote(client, name, "2", actor="alice", reason="retry", dag_run="d/r2")
    assert not again["moved"] and again["previous_champion"] == "1"
    trail = registry.audit_trail(client, name)
    assert [(e["action"], e["from"], e["to"], e["actor"]) for e in trail] == [
        ("promote", "none", "1", "scheduler"),
        ("promote", "1", "2", "alice"),
    ]


def test_rollback_restores_previous_and_refuses_when_nothing_to_restore(client, mlflow_config, request):
    name = _name(request)
    uri, run_id = _log_model(client, mlflow_config)
    for key in ("r1", "r2", "r3"):
        registry.register_model(client, name, uri, run_key=key, run_id=run_id, tags={})
    with pytest.raises(registry.RegistryError, match="no 'champion' alias"):
        registry.rollback(client, name, actor="x", reason="y")
    registry.promote(client, name, "1", actor="s", reason="r")
    with pytest.raises(registry.RegistryError, match="no recorded previous champion"):
        registry.rollback(client, name, actor="x", reason="y")
    registry.promote(client, name, "2", actor="s", reason="r")
    with pytest.raises(registry.RegistryError, match="not 3 as expected"):
        registry.rollback(client, name, expected_current="3", actor="x", reason="y")
    assert registry.get_alias_version(client, name, "champion") == "2"
    out = registry.rollback(client, name, expected_current="2", actor="x", reason="smoke test failed")
    assert (out["from"], out["to"]) == ("2", "1")
    assert registry.get_alias_version(client, name, "champion") == "1"
    tag = json.loads(client.get_model_version(name, "2").tags[registry.ROLLED_BACK_TAG])
    assert (tag["to"], tag["by"], tag["reason"], tag["audit_seq"]) == ("1", "x", "smoke test failed", out["audit_seq"])
    assert registry.ROLLED_BACK_TAG not in client.get_model_version(name, "1").tags
    with pytest.raises(registry.RegistryError, match="has no version 9"):
        registry.rollback(client, name, to_version="9", actor="bob", reason="manual")
    out = registry.rollback(client, name, to_version="3", actor="bob", reason="manual")
    assert registry.get_alias_version(client, name, "champion") == "3"
    actions = [(e["action"], e["from"], e["to"]) for e in registry.audit_trail(client, name)]
    assert actions[-2:] == [("rollback", "2", "1"), ("rollback", "1", "3")]


def test_failed_audit_write_puts_the_alias_back(client, mlflow_config, monkeypatch, request):
    name = _name(request)
    uri, run_id = _log_model(client, mlflow_config)
    for key in ("r1", "r2"):
        registry.register_model(client, name, uri, run_key=key, run_id=run_id, tags={})
    registry.promote(client, name, "1", actor="s", reason="r")

    def boom(*a, **k):
        raise ConnectionError("registry went away")

    monkeypatch.setattr(registry, "_append_audit", boom)
    with pytest.raises(ConnectionError):
        registry.promote(client, name, "2", actor="s", reason="r")
    assert registry.get_alias_version(client, name, "champion") == "1"
