"""Registration idempotency across reruns of one DAG run (real MLflow: SQLite and an HTTP server).

One version per DAG run *and training*: a rerun of the same training (same dataset digest and spec, i.e.
the same fingerprint) reuses its version; ``train`` rerun with other settings registers exactly one new
version, which a later rerun of ``register`` reuses in turn.
"""

from __future__ import annotations

import mlflow
import pytest

from gd_provider.core import registry
from gd_provider.core.lineage import training_fingerprint

pytestmark = pytest.mark.integration
DATASET = {"uri": "/d/training_set.parquet", "sha256": "a" * 64, "rows": 10}


class _Constant(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return [0.5] * len(model_input)


@pytest.fixture
def client(mlflow_backend):
    return mlflow_backend.client()


def _train(client, mlflow_backend) -> tuple[str, str]:
    exp = registry.ensure_experiment(client, "registry-rerun-test", mlflow_backend.artifact_root)
    with mlflow.start_run(experiment_id=exp) as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=_Constant(), pip_requirements=["mlflow"])
    return info.model_uri, run.info.run_id


def _register(client, name, uri, run_id, spec, tags=None):
    fp = training_fingerprint(DATASET, {"spec": spec})
    return registry.register_model(client, name, uri, run_key="dag/night2", run_id=run_id, fingerprint=fp,
                                   tags={registry.TRAINING_RUN_TAG: run_id, **(tags or {})})


def test_fingerprint_tells_trainings_of_one_run_apart(client, mlflow_backend, request):
    name = "m_" + request.node.name.replace("[", "_").replace("]", "")
    assert training_fingerprint(DATASET, {"spec": {"lr": 0.5, "seed": 42}}) == training_fingerprint(
        dict(DATASET, uri="/elsewhere"), {"spec": {"seed": 42, "lr": 0.5}})
    assert training_fingerprint(DATASET, {"spec": {"lr": 0.5}}) != training_fingerprint(DATASET, {"spec": {"lr": 0.003}})
    assert training_fingerprint(DATASET, {"spec": {"lr": 0.5}}) != training_fingerprint(
        dict(DATASET, sha256="b" * 64), {"spec": {"lr": 0.5}})

    uri_a, run_a = _train(client, mlflow_backend)
    assert _register(client, name, uri_a, run_a, {"lr": 0.5}, {"gd.blessed": "false"}) == ("1", True)
    # same training again (a retry, or every task cleared and rerun with the same data and settings)
    uri_a2, run_a2 = _train(client, mlflow_backend)
    assert _register(client, name, uri_a2, run_a2, {"lr": 0.5}, {"gd.blessed": "true"}) == ("1", False)
    v1 = client.get_model_version(name, "1")
    # never champion: it carries the rerun's decision (what a promotion would now go on) ...
    assert v1.tags["gd.blessed"] == "true" and registry.RERUN_DECISION_TAG not in v1.tags
    assert v1.tags[registry.TRAINING_RUN_TAG] == run_a == v1.run_id  # ... and never another artifact's lineage
    # train cleared and rerun with another learning rate: one new version, not the old one re-adopted
    uri_b, run_b = _train(client, mlflow_backend)
    assert _register(client, name, uri_b, run_b, {"lr": 0.003}) == ("2", True)
    # register (and downstream) cleared again: the new version is reused
    assert _register(client, name, uri_b, run_b, {"lr": 0.003}) == ("2", False)
    versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    assert [(str(v.version), v.run_id, v.tags[registry.FINGERPRINT_TAG]) for v in versions] == [
        ("1", run_a, training_fingerprint(DATASET, {"spec": {"lr": 0.5}})),
        ("2", run_b, training_fingerprint(DATASET, {"spec": {"lr": 0.003}})),
    ]
    assert [str(v.version) for v in registry.versions_by_run_key(client, name, "dag/night2")] == ["1", "2"]


def test_a_version_registered_before_fingerprints_is_reused_by_its_own_training_run(client, mlflow_backend, request):
    name = "m_" + request.node.name.replace("[", "_").replace("]", "")
    uri, run_id = _train(client, mlflow_backend)
    assert registry.register_model(client, name, uri, run_key="dag/night2", run_id=run_id, tags={}) == ("1", True)
    assert _register(client, name, uri, run_id, {"lr": 0.5}) == ("1", False)
    assert client.get_model_version(name, "1").tags[registry.FINGERPRINT_TAG] == training_fingerprint(
        DATASET, {"spec": {"lr": 0.5}})
    other_uri, other_run = _train(client, mlflow_backend)
    assert _register(client, name, other_uri, other_run, {"lr": 0.003}) == ("2", True)


def test_promotion_audit_records_the_training_settings(client, mlflow_backend, request):
    name = "m_" + request.node.name.replace("[", "_").replace("]", "")
    uri, run_id = _train(client, mlflow_backend)
    _register(client, name, uri, run_id, {"lr": 0.003}, {
        "gd.training_overrides": '{"epochs": 2, "lr": 0.003}', "gd.rerun.mechanism": "airflow_variable",
        "gd.rerun.variable": "gd_rerun.dag", "gd.rerun.reason": "diverged at lr=50",
        "gd.rerun.training_overrides": '{"lr": 0.003}'})
    registry.promote(client, name, "1", actor="scheduler", reason="gate blessed", dag_run="dag/night2")
    (entry,) = registry.audit_trail(client, name)
    assert entry["training_overrides"] == {"epochs": 2, "lr": 0.003}
    assert entry["rerun"] == {"mechanism": "airflow_variable", "variable": "gd_rerun.dag",
                              "reason": "diverged at lr=50", "training_overrides": {"lr": 0.003}}
