"""Release-stage operators against a real MLflow store (SQLite and an HTTP server): the gate checks its
holdout is training's, every check of a cleared run compares with the champion the run replaced (never
with its own model), promotion is a compare-and-swap, the smoke test tests this run's model, and a
retried rollback succeeds."""

from __future__ import annotations

import re

import mlflow
import numpy as np
import pandas as pd
import pytest
from airflow.sdk.exceptions import AirflowFailException

from gd_provider.core import registry
from gd_provider.core.data import write_dataset
from gd_provider.core.lineage import DATASET_SHA256, DATASET_URI
from gd_provider.core.training.runner import holdout_frame, holdout_info
from gd_provider.core.training.spec import TrainingSpec
from gd_provider.operators.drift import DriftCheckOperator
from gd_provider.operators.registry import (
    ModelEvaluationGateOperator,
    ModelSmokeTestOperator,
    PromoteModelOperator,
    RollbackModelOperator,
)
from gd_provider.operators.validation import DataValidationOperator

from ..support import AmountScorer, FakeTI, fake_context, register_scorer

pytestmark = pytest.mark.integration
SPEC = {"numeric_features": ["amount", "distance_from_home_km"], "categorical_features": ["channel"],
        "label": "is_fraud", "timestamp_column": "event_timestamp", "key_columns": ["transaction_id"]}


def _frame(n: int, shift: float = 0.0, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    amount = rng.gamma(2.0, 60.0, n) * (1 + shift)
    return pd.DataFrame({
        "transaction_id": [f"t{seed}-{i}" for i in range(n)],
        "event_timestamp": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 86400 * 30, n), "s"),
        "amount": amount,
        "distance_from_home_km": rng.exponential(10.0, n),
        "channel": rng.choice(["pos", "online", "atm"], n, p=[0.6 - shift / 3, 0.3 + shift / 3, 0.1]),
        "is_fraud": (rng.random(n) < 0.02 + 0.1 * (amount > 250)).astype("int64"),
    })


@pytest.fixture(autouse=True)
def backend(mlflow_conn):
    return mlflow_conn


@pytest.fixture
def name(request) -> str:
    return "m_" + re.sub(r"\W", "_", request.node.name)


@pytest.fixture
def client(backend):
    from gd_provider.hooks.mlflow import MlflowHook

    return MlflowHook().get_config().client()


@pytest.fixture
def experiment(client, backend, name):
    from gd_provider.hooks.mlflow import MlflowHook

    return registry.ensure_experiment(client, name, MlflowHook().get_config().artifact_root)


def _data(gd_home, file: str, **kw) -> dict:
    return write_dataset(_frame(3000, **kw), str(gd_home / file)).to_dict()


def _two_nights(client, experiment, gd_home, name) -> tuple[dict, dict]:
    """Night 1 (run n1) promoted v1, trained on reference data; night 2 (run n2) trained v2 on drifted data
    and promoted it over v1. Returns the two datasets."""
    ref, cur = _data(gd_home, "ref.parquet", seed=1), _data(gd_home, "cur.parquet", shift=0.9, seed=2)
    for night, data in ((1, ref), (2, cur)):
        v = register_scorer(client, experiment, name, f"test_dag/n{night}",
                            {DATASET_URI: data["uri"], DATASET_SHA256: data["sha256"]})
        registry.promote(client, name, v, actor="scheduler", reason="blessed", dag_run=f"test_dag/n{night}",
                         expected_current=None if night == 1 else "1")
    return ref, cur


def _training(experiment, dataset: dict) -> dict:
    spec = TrainingSpec.from_dict(SPEC)
    with mlflow.start_run(experiment_id=experiment) as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=AmountScorer(), pip_requirements=["mlflow"])
    return {"model_uri": info.model_uri, "mlflow_run_id": run.info.run_id, "spec": spec.to_dict(),
            "holdout": holdout_info(holdout_frame(dataset, spec), spec)}


def _gate(name: str, dataset: dict, training: dict) -> ModelEvaluationGateOperator:
    return ModelEvaluationGateOperator(task_id="evaluate", dataset=dataset, training=training, model_name=name,
                                       policy={"value_thresholds": {"roc_auc": 0.5}})


def test_gate_requires_trainings_holdout(gd_home, client, experiment, name):
    dataset = _data(gd_home, "train.parquet", seed=5)
    training = _training(experiment, dataset)
    out = _gate(name, dataset, training).execute(fake_context(run_id="n1"))
    assert out["holdout_sha256"] == training["holdout"]["sha256"] and out["holdout_rows"] == training["holdout"]["rows"]
    assert out["champion_version"] is None
    # the gate rebuilt another holdout than training held out (another dataset, other split settings)
    other = _data(gd_home, "other.parquet", seed=6)
    with pytest.raises(AirflowFailException, match="not the one training held out .*: sha256 .* vs training.s"):
        _gate(name, other, training).execute(fake_context(run_id="n1"))
    with pytest.raises(AirflowFailException, match=r"rows vs training's 1"):
        _gate(name, dataset, {**training, "holdout": {**training["holdout"], "rows": 1}}).execute(fake_context())
    with pytest.raises(AirflowFailException, match="records no holdout digest"):
        _gate(name, dataset, {k: v for k, v in training.items() if k != "holdout"}).execute(fake_context())


def test_cleared_promoted_run_compares_with_the_champion_it_replaced(gd_home, client, experiment, name):
    ref, cur = _two_nights(client, experiment, gd_home, name)
    assert registry.get_alias_version(client, name, "champion") == "2"
    ctx = fake_context(run_id="n2")  # night 2 cleared after it finished: v2 (its own model) is champion
    gate = _gate(name, cur, _training(experiment, cur)).execute(ctx)
    assert gate["champion_version"] == "1"
    drift = DriftCheckOperator(task_id="drift_check", dataset=cur, model_name=name, policy="warn",
                               numeric_columns=["amount", "distance_from_home_km"],
                               categorical_columns=["channel"]).execute(fake_context(run_id="n2"))
    assert drift["champion_version"] == "1" and drift["dataset_drift"] is True  # not cur vs cur
    validate = DataValidationOperator(task_id="validate", dataset=cur, champion_model_name=name, log_to_mlflow=False)
    _, checks = validate._champion_expectations(dict(cur), [], "test_dag/n2")
    assert checks["version"] == "1" and checks["uri"] == ref["uri"]
    # another run compares with the champion itself
    assert _gate(name, cur, _training(experiment, cur)).execute(fake_context(run_id="n3"))["champion_version"] == "2"


def _promote_op(name: str, version: str, baseline, **kw) -> PromoteModelOperator:
    return PromoteModelOperator(task_id="promote", model={"name": name, "version": version},
                                gate={"blessed": True, "reasons": ["better"], "champion_version": baseline}, **kw)


def test_promote_operator_is_a_compare_and_swap(gd_home, client, experiment, name):
    for n in (1, 2, 3, 4):
        v = register_scorer(client, experiment, name, f"test_dag/n{n}", {})
        _promote_op(name, v, None if n == 1 else str(n - 1)).execute(fake_context(run_id=f"n{n}"))
    # night 2 cleared from promote: its gate blessed v2 against v1, the champion is v4 now
    with pytest.raises(AirflowFailException, match="refused: .*compared v2 with v1, but .* is now v4"):
        _promote_op(name, "2", "1").execute(fake_context(run_id="n2"))
    assert registry.get_alias_version(client, name, "champion") == "4"
    assert len(registry.audit_trail(client, name)) == 4
    with pytest.raises(AirflowFailException, match="has no 'champion_version'"):
        PromoteModelOperator(task_id="promote", model={"name": name, "version": "2"},
                             gate={"blessed": True, "reasons": ["ok"]}).execute(fake_context(run_id="n2"))
    out = _promote_op(name, "2", "1", force_reason="v4 and v3 are broken").execute(fake_context(run_id="n2", user="al"))
    assert out["moved"] and registry.get_alias_version(client, name, "champion") == "2"
    assert client.get_model_version(name, "2").tags["gd.forced_promotion_reason"] == "v4 and v3 are broken"
    last = registry.audit_trail(client, name)[-1]
    assert last["actor"] == "al" and last["forced"] == "v4 and v3 are broken" and "is now v4" in last["overridden"][0]


def test_smoke_test_after_rollback_fails_and_retried_rollback_succeeds(gd_home, client, experiment, name):
    canary = _data(gd_home, "canary.parquet", seed=4)
    v1 = register_scorer(client, experiment, name, "test_dag/n1", {})
    registry.promote(client, name, v1, actor="s", reason="r")
    v2 = register_scorer(client, experiment, name, "test_dag/n2", {})
    ti = FakeTI()
    ctx = fake_context(run_id="n2", ti=ti)
    ti.xcoms[("promote", "return_value")] = _promote_op(name, v2, v1).execute(ctx)
    smoke = ModelSmokeTestOperator(task_id="smoke_test", dataset=canary, model_name=name, positive_rate_bounds=(0, 1))
    assert smoke.execute(ctx)["version"] == v2
    first = RollbackModelOperator(task_id="rollback").execute(ctx)  # as if the smoke test had failed
    assert (first["from"], first["to"], first["moved"]) == (v2, v1, True)
    # smoke_test and downstream cleared: the model at the alias now is v1, not this run's v2
    with pytest.raises(AirflowFailException, match=f"is v{v1}, not v{v2} that this run promoted"):
        smoke.execute(ctx)
    # ... so the rollback runs again: its own move already happened, which is success, not "moved since"
    again = RollbackModelOperator(task_id="rollback").execute(ctx)
    assert (again["to"], again["moved"]) == (v1, False)
    assert [e["action"] for e in registry.audit_trail(client, name)] == ["promote", "promote", "rollback"]
    # an explicit version wins over the XCom; without either, the alias is tested as before
    explicit = ModelSmokeTestOperator(task_id="smoke_test", dataset=canary, model_name=name, version=v1,
                                      positive_rate_bounds=(0, 1), max_positive_rate_change=None)
    assert explicit.execute(ctx)["version"] == v1
    assert smoke.execute(fake_context(run_id="n3"))["version"] == v1
