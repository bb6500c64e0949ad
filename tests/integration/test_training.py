"""Real Ray Train (1 and 2 CPU workers) and MLflow (sqlite store) on a small synthetic fraud dataset.

One local Ray instance serves the whole module; each TorchTrainer run still costs ~15-25 s here.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from gd_provider.core.data import write_dataset
from gd_provider.core.training import runner as runner_mod
from gd_provider.core.training.preprocess import frame_digest
from gd_provider.core.training.runner import (
    TrainingInputError,
    TrainingResult,
    holdout_frame,
    run_training,
)
from gd_provider.demo import schema as S
from gd_provider.demo.schema import training_spec as demo_training_spec

pytestmark = pytest.mark.integration

N_ROWS = 6000


def synthetic_transactions(n: int, seed: int = 0) -> pd.DataFrame:
    """Demo-schema rows whose label depends clearly on a few features (a separable-enough problem)."""
    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.integers(0, 28 * 86400, n))
    df = pd.DataFrame(
        {
            S.TRANSACTION_ID: [f"tx{i:07d}" for i in range(n)],
            "card_id": rng.integers(0, 400, n),
            "merchant_id": rng.integers(0, 80, n),
            S.TIMESTAMP: pd.Timestamp("2025-01-01", tz="UTC") + pd.to_timedelta(seconds, unit="s"),
        }
    )
    for col in S.NUMERIC_FEATURES:
        df[col] = rng.normal(size=n)
    df["amount"] = rng.lognormal(3.5, 1.0, n)
    df["hour_of_day"] = rng.integers(0, 24, n)
    df["is_foreign"] = (rng.random(n) < 0.1).astype("int64")
    df["channel"] = rng.choice(S.CHANNELS, n)
    df["merchant_category"] = rng.choice(S.MERCHANT_CATEGORIES, n)
    df.loc[rng.random(n) < 0.02, "card_avg_amount_7d"] = np.nan
    logit = (
        -3.0
        + 1.8 * (np.log(df["amount"]) - 3.5)
        + 2.0 * df["is_foreign"]
        + 1.5 * df["merchant_risk_score"]
        + 1.0 * df["card_chargeback_rate_90d"]
        + 1.5 * (df["merchant_category"] == "gaming")
    )
    df[S.LABEL] = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype("int64")
    return df


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("training")


@pytest.fixture(scope="module")
def manifest(workdir):
    df = synthetic_transactions(N_ROWS)
    return write_dataset(
        df,
        str(workdir / "data" / "train.parquet"),
        sort_by=[S.TIMESTAMP, S.TRANSACTION_ID],
        entity_keys=list(S.ENTITY_KEYS),
        timestamp_column=S.TIMESTAMP,
        label_column=S.LABEL,
    )


@pytest.fixture(scope="module")
def spec():
    return demo_training_spec(epochs=6, seed=7)


@pytest.fixture(scope="module")
def one_worker(local_ray, manifest, spec, workdir):
    return run_training(manifest, spec, storage_path=str(workdir / "ray"), run_name="one_worker")


# ---------------------------------------------------------------------------------------------- no Ray
def test_missing_column_fails_before_ray_starts(manifest, spec, workdir, monkeypatch):
    import ray
    import ray.train.torch

    def must_not_run(*args, **kwargs):
        raise AssertionError("Ray must not be touched for a bad spec")

    monkeypatch.setattr(runner_mod, "init_local_ray", must_not_run)
    monkeypatch.setattr(ray.train.torch, "TorchTrainer", must_not_run)
    was_initialized = ray.is_initialized()
    bad = spec.with_overrides(numeric_features=[*spec.numeric_features, "velocity_1h"])
    with pytest.raises(TrainingInputError, match="velocity_1h"):
        run_training(manifest, bad, storage_path=str(workdir / "ray"), run_name="bad_feature")
    with pytest.raises(TrainingInputError, match="'fraud_label' \\(label\\)"):
        run_training(
            manifest,
            spec.with_overrides(label="fraud_label"),
            storage_path=str(workdir / "ray"),
            run_name="bad_label",
        )
    assert ray.is_initialized() == was_initialized
    assert not (workdir / "ray" / "bad_feature").exists()


def test_ray_client_address_is_refused_before_ray_starts(manifest, spec, workdir):
    # remote clusters are reached through the Ray Jobs API (see test_ray_jobs.py), never Ray Client
    with pytest.raises(TrainingInputError, match="Ray Client and URL addresses are not supported"):
        run_training(
            manifest,
            spec,
            storage_path=str(workdir / "ray"),
            run_name="remote",
            ray_address="ray://head:10001",
        )
    assert not (workdir / "ray" / "remote").exists()


# ---------------------------------------------------------------------------------------------- Ray
def _comparable(history):
    return [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in history]


def test_one_worker_trains_and_is_reproducible(one_worker, manifest, spec, workdir):
    result = one_worker
    assert result.status == "completed", result.error
    assert len(result.history) == spec.epochs
    assert result.metrics["val_roc_auc"] > 0.8
    assert result.metrics["epoch"] == spec.epochs
    assert all(h["world_size"] == 1 for h in result.history)
    health = result.health
    assert health["steps"] == len(result.steps["loss"]) == result.history[-1]["global_step"]
    assert health["nonfinite_steps"] == 0 and math.isfinite(health["max_grad_norm"])
    # holdout info matches the helper that a gate would use
    holdout = holdout_frame(manifest, spec)
    assert result.holdout["rows"] == len(holdout) == result.split["holdout_rows"]
    assert result.holdout["sha256"] == frame_digest(holdout, spec.key_columns)[0]
    assert result.holdout["time_range"][1] == holdout[S.TIMESTAMP].max().isoformat()
    assert TrainingResult.from_dict(result.to_dict()).metrics == result.metrics

    again = run_training(manifest, spec, storage_path=str(workdir / "ray"), run_name="one_worker_again")
    assert again.status == "completed", again.error
    assert again.metrics == result.metrics
    assert _comparable(again.history) == _comparable(result.history)
    assert again.steps == result.steps


def test_two_workers(local_ray, manifest, spec, workdir):
    spec2 = spec.with_overrides(num_workers=2, cpus_per_worker=0.5)
    result = run_training(manifest, spec2, storage_path=str(workdir / "ray"), run_name="two_workers")
    assert result.status == "completed", result.error
    assert len(result.history) == spec2.epochs
    assert result.metrics["val_roc_auc"] > 0.8
    assert all(h["world_size"] == 2 for h in result.history)
    per_worker = result.split["train_rows"] // 2
    assert result.history[0]["train_rows_per_worker"] == per_worker
    assert result.health["steps"] == spec2.epochs * math.ceil(per_worker / spec2.batch_size)


def test_log_to_mlflow_and_load_back(one_worker, manifest, spec, workdir):
    import mlflow
    from mlflow.tracking import MlflowClient

    from gd_provider.core.training.pyfunc import FraudScorer, log_training_run

    assert one_worker.status == "completed", one_worker.error
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    try:
        experiment_id = mlflow.create_experiment(
            "gd-training-test", artifact_location=str(workdir / "artifacts")
        )
        out = log_training_run(
            one_worker,
            spec,
            manifest.to_dict(),
            experiment_id=experiment_id,
            run_name="train-one-worker",
            tags={"gd.dag_id": "test"},
        )
        assert out["model_uri"].startswith("models:/")
        assert out["run_model_uri"] == f"runs:/{out['mlflow_run_id']}/model"
        holdout = holdout_frame(manifest, spec)
        expected = FraudScorer(one_worker.model_dir).predict_proba(holdout)
        assert expected.shape == (len(holdout),) and np.all((expected >= 0) & (expected <= 1))
        for uri in (out["model_uri"], out["run_model_uri"]):
            predicted = np.asarray(mlflow.pyfunc.load_model(uri).predict(holdout))
            np.testing.assert_allclose(predicted, expected, rtol=0, atol=1e-7)

        client = MlflowClient()
        run = client.get_run(out["mlflow_run_id"])
        assert run.data.params["spec.lr"] == str(spec.lr)
        assert run.data.params["dataset.sha256"] == manifest.sha256
        assert run.data.tags["gd.health.steps"] == str(one_worker.health["steps"])
        assert run.data.tags["gd.dag_id"] == "test"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_roc_auc")] == list(
            range(1, spec.epochs + 1)
        )
        assert len(client.get_metric_history(run.info.run_id, "step_loss")) == one_worker.health["steps"]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert "plots/training_curves.png" in artifacts
        assert out["metrics"]["val_roc_auc"] == one_worker.metrics["val_roc_auc"]
    finally:
        mlflow.set_tracking_uri(None)
