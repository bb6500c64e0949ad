"""Drift policies, promotion failures, rollback modes, smoke test and the version sensor, run as
operators against a real MLflow store (embedded SQLite; the promotion-failure test uses a server)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from gd_provider.core import registry
from gd_provider.core.data import write_dataset
from gd_provider.core.lineage import DATASET_SHA256, DATASET_URI
from gd_provider.operators.drift import DriftCheckOperator
from gd_provider.operators.registry import (
    ModelSmokeTestOperator,
    PromoteModelOperator,
    RollbackModelOperator,
)
from gd_provider.sensors.registry import ModelVersionSensor

from ..support import FakeTI, fake_context, register_scorer

pytestmark = pytest.mark.integration


def _frame(n: int, shift: float = 0.0, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "transaction_id": [f"t{seed}-{i}" for i in range(n)],
            "amount": rng.gamma(2.0, 60.0, n) * (1 + shift),
            "distance_from_home_km": rng.exponential(10.0, n),
            "channel": rng.choice(["pos", "online", "atm"], n, p=[0.6 - shift / 3, 0.3 + shift / 3, 0.1]),
            "is_fraud": (rng.random(n) < 0.05).astype("int64"),
        }
    )


@pytest.fixture(autouse=True)
def backend(mlflow_conn):
    """Every operator test runs on the embedded SQLite store and on a real MLflow server over HTTP."""
    return mlflow_conn


@pytest.fixture
def name(request) -> str:
    """One registered model per test (the HTTP server is shared by the session)."""
    return "m_" + re.sub(r"\W", "_", request.node.name)


@pytest.fixture
def mlflow_config(backend):
    from gd_provider.hooks.mlflow import MlflowHook

    return MlflowHook().get_config()


@pytest.fixture
def client(mlflow_config):
    return mlflow_config.client()


@pytest.fixture
def experiment(client, mlflow_config, name):
    return registry.ensure_experiment(client, name, mlflow_config.artifact_root)


@pytest.fixture
def champion(client, experiment, gd_home, name):
    """v1 is the champion, trained (so its lineage says) on reference.parquet."""
    ref = write_dataset(_frame(3000, seed=1), str(gd_home / "reference.parquet"))
    v = register_scorer(client, experiment, name, "d/r1", {DATASET_URI: ref.uri, DATASET_SHA256: ref.sha256})
    registry.promote(client, name, v, actor="scheduler", reason="first")
    return v


def _drift_op(name: str, policy: str, dataset: dict, **kw) -> DriftCheckOperator:
    return DriftCheckOperator(
        task_id="drift_check",
        dataset=dataset,
        model_name=name,
        policy=policy,
        numeric_columns=["amount", "distance_from_home_km"],
        categorical_columns=["channel"],
        **kw,
    )


def test_drift_without_champion_says_so(gd_home, client, name):
    current = write_dataset(_frame(500), str(gd_home / "cur.parquet")).to_dict()
    out = _drift_op(name, "block", current).execute(fake_context())
    assert out["status"] == "no_reference" and out["champion_version"] is None


def test_drift_policies_on_drifted_data(gd_home, client, champion, name):
    drifted = write_dataset(_frame(3000, shift=0.9, seed=2), str(gd_home / "cur.parquet")).to_dict()
    ctx = fake_context()
    out = _drift_op(name, "retrain", drifted).execute(ctx)
    assert out["status"] == "ok" and out["dataset_drift"] is True
    assert "amount" in out["drifted_columns"] and "amount" in out["message"]
    assert out["prediction_drift"]["drifted"] is True and "prediction drift" in out["message"]
    # reports written and logged to an MLflow run, with links pushed for the UI
    assert out["report_uri"].endswith("drift.html")
    artifacts = {a.path for a in client.list_artifacts(out["mlflow_run_id"])}
    assert {"drift.html", "drift.json"} <= artifacts
    assert any(k[1].startswith("_link_") for k in ctx["ti"].xcoms)

    assert _drift_op(name, "warn", drifted).execute(fake_context())["status"] == "warn"
    with pytest.raises(AirflowFailException, match="drift gate blocked the run: Dataset drift detected"):
        _drift_op(name, "block", drifted).execute(fake_context())
    with pytest.raises(AirflowFailException, match="drift policy 'yolo'"):
        _drift_op(name, "yolo", drifted).execute(fake_context())


def test_drift_same_distribution_and_per_column_override(gd_home, client, champion, name):
    same = write_dataset(_frame(3000, seed=3), str(gd_home / "same.parquet")).to_dict()
    out = _drift_op(name, "block", same).execute(fake_context())
    assert out["status"] == "ok" and out["drifted_columns"] == []
    # a tiny threshold on one column makes exactly that column drift, with its pinned method
    out = _drift_op(
        name, "warn", same, per_column={"distance_from_home_km": {"method": "psi", "threshold": 1e-9}}
    ).execute(fake_context())
    assert out["drifted_columns"] == ["distance_from_home_km"]
    report = json.loads(Path(out["report_uri"]).with_suffix(".json").read_text())
    assert "psi" in json.dumps(report).lower()


def test_drift_refuses_a_tampered_reference(gd_home, client, champion, name):
    ref = registry.get_alias_version(client, name, "champion")
    path = client.get_model_version(name, ref).tags[DATASET_URI]
    _frame(10, seed=9).to_parquet(path)
    current = write_dataset(_frame(500), str(gd_home / "cur.parquet")).to_dict()
    with pytest.raises(AirflowFailException, match="changed since it was written"):
        _drift_op(name, "warn", current).execute(fake_context())


def test_promotion_fails_clearly_when_mlflow_drops_and_alias_stays(monkeypatch, gd_home, mlflow_server, name):
    from mlflow import MlflowClient

    from gd_provider.core.registry import MlflowConfig

    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_DEFAULT",
        json.dumps(
            {
                "conn_type": "mlflow",
                "host": "127.0.0.1",
                "port": int(mlflow_server.rsplit(":", 1)[1]),
                "schema": "http",
            }
        ),
    )
    client = MlflowConfig(tracking_uri=mlflow_server).client()
    exp = registry.ensure_experiment(client, name, None)
    v1 = register_scorer(client, exp, name, "d/r1", {})
    v2 = register_scorer(client, exp, name, "d/r2", {})
    registry.promote(client, name, v1, actor="scheduler", reason="first")
    op = PromoteModelOperator(
        task_id="promote", model={"name": name, "version": v2},
        gate={"blessed": True, "reasons": ["ok"], "champion_version": v1},
    )

    def network_drop(self, *args, **kwargs):
        raise ConnectionError("connection reset by peer")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", network_drop)
    with pytest.raises(
        AirflowException,
        match=rf"promotion of {name} v{v2} to @champion failed talking to MLflow "
        rf"at {mlflow_server}: ConnectionError",
    ):
        op.execute(fake_context())
    monkeypatch.undo()
    assert registry.get_alias_version(client, name, "champion") == v1
    assert [e["to"] for e in registry.audit_trail(client, name)] == [v1]

    # and a server that cannot be reached at all: a clear error, quickly
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_DEFAULT",
        json.dumps({"conn_type": "mlflow", "host": "127.0.0.1", "port": 9, "schema": "http"}),
    )
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(AirflowException, match="failed talking to MLflow at http://127.0.0.1:9"):
        op.execute(fake_context())
    assert registry.get_alias_version(client, name, "champion") == v1


def test_rejected_challenger_is_not_promoted(gd_home, client, champion, name):
    op = PromoteModelOperator(
        task_id="promote",
        model={"name": name, "version": "2"},
        gate={"blessed": False, "reasons": ["pr_auc 0.1 vs champion 0.3: FAIL"], "champion_version": champion},
    )
    with pytest.raises(AirflowSkipException, match="not promoted: pr_auc 0.1 vs champion 0.3: FAIL"):
        op.execute(fake_context())
    assert registry.get_alias_version(client, name, "champion") == champion


def test_audit_after_promote_rollback_and_manual_rollback(gd_home, client, experiment, champion, name):
    v2 = register_scorer(client, experiment, name, "d/r2", {})
    ti = FakeTI()
    promoted = PromoteModelOperator(
        task_id="promote", model={"name": name, "version": v2},
        gate={"blessed": True, "reasons": ["better"], "champion_version": champion},
    ).execute(fake_context(ti=ti))
    ti.xcoms[("promote", "return_value")] = promoted
    auto = RollbackModelOperator(task_id="rollback").execute(fake_context(ti=ti, user=None))
    assert (auto["from"], auto["to"]) == (v2, champion)
    manual = RollbackModelOperator(
        task_id="rollback",
        promote_task_id=None,
        model_name=name,
        to_version=v2,
        reason="v1 misbehaves in prod",
    ).execute(fake_context(user="alice"))
    assert manual["to"] == v2
    trail = registry.audit_trail(client, name)
    assert [(e["action"], e["from"], e["to"], e["actor"]) for e in trail] == [
        ("promote", "none", champion, "scheduler"),
        ("promote", champion, v2, "tester"),
        ("rollback", v2, champion, "scheduler"),
        ("rollback", champion, v2, "alice"),
    ]
    assert trail[-1]["reason"] == "v1 misbehaves in prod"
    with pytest.raises(AirflowFailException, match="version number or 'previous'"):
        RollbackModelOperator(
            task_id="rb", promote_task_id=None, model_name=name, to_version="v1", reason="typo"
        ).execute(fake_context())


def test_automatic_rollback_skips_when_nothing_was_promoted(gd_home, client, champion, name):
    with pytest.raises(AirflowSkipException, match="promoted nothing"):
        RollbackModelOperator(task_id="rollback").execute(fake_context())
    ti = FakeTI(
        {
            ("promote", "return_value"): {
                "name": name,
                "version": champion,
                "alias": "champion",
                "previous_champion": "none",
            }
        }
    )
    with pytest.raises(AirflowFailException, match="no previous champion to restore"):
        RollbackModelOperator(task_id="rollback").execute(fake_context(ti=ti))


def test_smoke_test_compares_positive_rate_with_previous_champion(
    gd_home, client, experiment, champion, name
):
    canary = write_dataset(_frame(1000, seed=4), str(gd_home / "canary.parquet")).to_dict()
    ok = ModelSmokeTestOperator(task_id="smoke", dataset=canary, model_name=name, positive_rate_bounds=(0, 1))
    assert ok.execute(fake_context())["previous_champion"] == "none"
    # a challenger that flags far more transactions than the champion did on the same canary
    v2 = register_scorer(client, experiment, name, "d/r2", {}, scale=20.0)
    registry.promote(client, name, v2, actor="s", reason="r")
    with pytest.raises(
        AirflowFailException, match=rf"vs previous champion v{champion}'s .* change above 0.05"
    ):
        ok.execute(fake_context())


def test_model_version_sensor(gd_home, client, experiment, name):
    by_tags = ModelVersionSensor(task_id="wait", model_name=name, tags={"gd.blessed": "true"})
    by_alias = ModelVersionSensor(task_id="wait2", model_name=name, alias="champion", alias_changes_from="1")
    assert not by_tags.poke(fake_context()).is_done
    register_scorer(client, experiment, name, "d/r1", {"gd.blessed": "false"})
    assert not by_tags.poke(fake_context()).is_done
    v2 = register_scorer(client, experiment, name, "d/r2", {"gd.blessed": "true"})
    done = by_tags.poke(fake_context())
    assert done.is_done and done.xcom_value["version"] == v2
    registry.promote(client, name, "1", actor="s", reason="r")
    assert not by_alias.poke(fake_context()).is_done
    registry.promote(client, name, v2, actor="s", reason="r")
    assert by_alias.poke(fake_context()).xcom_value == {"name": name, "version": v2, "alias": "champion"}


def test_register_three_times_in_one_dag_run_gives_one_version(gd_home, client, experiment, name):
    import mlflow

    from gd_provider.operators.registry import RegisterModelOperator

    from ..support import AmountScorer

    with mlflow.start_run(experiment_id=experiment) as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=AmountScorer(), pip_requirements=["mlflow"])
    dataset = write_dataset(_frame(100), str(gd_home / "train.parquet"), feature_refs=["card_stats:x"]).to_dict()
    training = {"model_uri": info.model_uri, "mlflow_run_id": run.info.run_id, "spec": {"seed": 7},
                "health": {"status": "completed", "nonfinite_steps": 0}}
    gate = {"blessed": True, "reasons": ["roc_auc 0.9 >= 0.8: pass"], "champion_version": None,
            "holdout_sha256": "abc", "holdout_rows": 10, "challenger_metrics": {"roc_auc": 0.9}}
    op = RegisterModelOperator(task_id="register", dataset=dataset, training=training, gate=gate, model_name=name)
    results = [op.execute(fake_context(run_id="scheduled__2026-02-01")) for _ in range(3)]
    assert [(r["version"], r["created"]) for r in results] == [("1", True), ("1", False), ("1", False)]
    assert len(client.search_model_versions(f"name = '{name}'")) == 1
    tags = client.get_model_version(name, "1").tags
    assert tags["gd.airflow_run_id"] == "scheduled__2026-02-01" and tags["gd.dataset_sha256"] == dataset["sha256"]
    assert tags["gd.seed"] == "7" and tags["gd.metric.roc_auc"] == "0.900000" and tags["gd.blessed"] == "true"
    assert tags["gd.health.nonfinite_steps"] == "0" and tags["gd.training_run_id"] == run.info.run_id
    # a different DAG run is a different version
    other = op.execute(fake_context(run_id="scheduled__2026-02-02"))
    assert (other["version"], other["created"]) == ("2", True)


def test_forced_promotion_records_the_reason(gd_home, client, experiment, champion, name):
    v2 = register_scorer(client, experiment, name, "d/r2", {})
    op = PromoteModelOperator(task_id="promote", model={"name": name, "version": v2},
                              gate={"blessed": False, "reasons": ["pr_auc 0.20 vs champion 0.25: FAIL"],
                                    "champion_version": champion},
                              force_reason="hotfix for a known bad champion")
    out = op.execute(fake_context(user="alice"))
    assert out["version"] == v2 and registry.get_alias_version(client, name, "champion") == v2
    assert client.get_model_version(name, v2).tags["gd.forced_promotion_reason"] == "hotfix for a known bad champion"
    last = registry.audit_trail(client, name)[-1]
    assert last["actor"] == "alice" and last["reason"].startswith("FORCED by request (hotfix for a known bad champion)")
    assert "pr_auc 0.20 vs champion 0.25: FAIL" in last["reason"]


def test_automatic_rollback_undoes_this_run_s_interrupted_promotion(gd_home, client, experiment, champion, name):
    """The server died after promote moved the alias, before it returned (no promotion XCom, its intent
    pending): the run's rollback still finds it, writes the promotion's audit entry, then restores v1."""
    from gd_provider.operators._common import run_key

    v2 = register_scorer(client, experiment, name, "d/r2", {})
    ctx = fake_context()
    registry._begin_change(client, name, {"action": "promote", "alias": "champion", "from": champion, "to": v2,
                                          "actor": "scheduler", "reason": "gate passed", "dag_run": run_key(ctx)})
    client.set_registered_model_alias(name, "champion", v2)  # ... and the server went away here
    with pytest.raises(AirflowSkipException, match="promoted nothing"):  # without the model's name: as before
        RollbackModelOperator(task_id="rollback").execute(ctx)
    done = RollbackModelOperator(task_id="rollback", model_name=name).execute(ctx)
    assert (done["from"], done["to"]) == (v2, champion)
    assert registry.get_alias_version(client, name, "champion") == champion
    trail = [(e["action"], e["from"], e["to"]) for e in registry.audit_trail(client, name)]
    assert trail == [("promote", "none", champion), ("promote", champion, v2), ("rollback", v2, champion)]
    assert registry.pending_change(client, name) is None
    # another run's pending promotion is not this run's to undo
    v3 = register_scorer(client, experiment, name, "d/r3", {})
    registry._begin_change(client, name, {"action": "promote", "alias": "champion", "from": champion, "to": v3,
                                          "actor": "scheduler", "reason": "gate passed", "dag_run": "other:run"})
    client.set_registered_model_alias(name, "champion", v3)
    with pytest.raises(AirflowSkipException, match="promoted nothing"):
        RollbackModelOperator(task_id="rollback", model_name=name).execute(ctx)
