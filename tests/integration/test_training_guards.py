"""Guarded gradient descent on real Ray Train (local, CPU workers) on a tiny separable dataset.

* an exploding learning rate on 2 workers -> a collective abort: both ranks stop after the same step,
  ``status="diverged"``, the run is logged to MLflow (tag ``gd.health.status=diverged``) without a model;
* a dead-gradient model -> ``vanishing_gradient``;
* full-batch and single-sample SGD converge (mini-batch: see test_training.py);
* a worker killed at epoch 2 -> Ray restarts the group from the epoch-1 checkpoint and the run completes.

One local Ray instance serves the module; each TorchTrainer run costs ~10-25 s here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gd_provider.core.data import write_dataset
from gd_provider.core.training.runner import run_training
from gd_provider.core.training.spec import TrainingSpec

pytestmark = pytest.mark.integration

FEATURES = ["x1", "x2", "x3", "x4"]


def separable_frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    df = pd.DataFrame(x, columns=FEATURES)
    df["label"] = (x[:, 0] + 0.5 * x[:, 1] - 0.3 * x[:, 2] > 0.2).astype("int64")
    df["transaction_id"] = [f"t{i:06d}" for i in range(n)]
    df["event_timestamp"] = pd.Timestamp("2025-01-01", tz="UTC") + pd.to_timedelta(
        np.arange(n) * 60, unit="s"
    )
    return df


def base_spec(**overrides) -> TrainingSpec:
    spec = TrainingSpec(
        numeric_features=FEATURES,
        categorical_features=[],
        label="label",
        timestamp_column="event_timestamp",
        model="logistic",
        hidden_sizes=[],
        optimizer="adam",
        lr=0.05,
        batch_size=64,
        epochs=3,
        seed=11,
        pos_weight=1.0,
    )
    return spec.with_overrides(overrides)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("guards")


def _manifest(workdir, n: int, name: str):
    return write_dataset(
        separable_frame(n),
        str(workdir / "data" / f"{name}.parquet"),
        sort_by=["event_timestamp", "transaction_id"],
        timestamp_column="event_timestamp",
        label_column="label",
    )


@pytest.fixture(scope="module")
def manifest(workdir):
    return _manifest(workdir, 3000, "separable")


@pytest.fixture(scope="module")
def tiny_manifest(workdir):
    return _manifest(workdir, 400, "tiny")


def run(manifest, spec, workdir, name, **kwargs):
    return run_training(manifest, spec, storage_path=str(workdir / "ray"), run_name=name, **kwargs)


# ---------------------------------------------------------------------------------------------- divergence
def test_exploding_lr_aborts_collectively_on_two_workers(local_ray, manifest, workdir):
    spec = base_spec(
        model="mlp",
        hidden_sizes=[32, 16],
        optimizer="sgd",
        lr=10.0,
        momentum=0.9,
        grad_clip_norm=None,
        num_workers=2,
        cpus_per_worker=0.5,
        sync_every_k_steps=5,
        epochs=5,
    )
    result = run(manifest, spec, workdir, "explode")
    assert result.status == "diverged", (result.status, result.error)
    assert result.model_dir is None and result.metrics == {}
    trip = result.guard
    assert trip["kind"] in {
        "grad_explosion",
        "grad_explosion_relative",
        "loss_spike",
        "nonfinite_loss",
        "nonfinite_grad",
    }, trip
    assert trip["reason"] and result.error.startswith("training diverged: ")
    state = result.run_state
    # both ranks stopped after the same step: the check point at or after the tripping step
    assert state["stopped_steps_by_rank"] == [state["stopped_at_step"]] * 2
    assert trip["step"] <= state["stopped_at_step"] < trip["step"] + spec.sync_every_k_steps
    assert len(result.steps["step"]) == state["stopped_at_step"]
    assert trip["epoch"] == result.steps["epoch"][trip["step"] - 1]
    assert trip["rank"] in (0, 1) and trip["batch"] >= 0
    health = result.health
    assert health["status"] == "diverged" and health["guard_step"] == trip["step"]

    # the post-mortem: an MLflow run with the telemetry up to the abort, tagged diverged, and no model
    import mlflow
    from mlflow.tracking import MlflowClient

    from gd_provider.core.training.pyfunc import log_training_run

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    try:
        experiment_id = mlflow.create_experiment("guards", artifact_location=str(workdir / "artifacts"))
        out = log_training_run(result, spec, manifest.to_dict(), experiment_id=experiment_id, run_name="boom")
        assert out["model_uri"] is None and out["status"] == "diverged"
        client = MlflowClient()
        logged = client.get_run(out["mlflow_run_id"])
        assert logged.data.tags["gd.health.status"] == "diverged"
        assert logged.data.tags["gd.health.guard_kind"] == trip["kind"]
        assert logged.data.params["spec.guards.max_grad_norm"] == str(spec.guards.max_grad_norm)
        finite_steps = sum(1 for v in result.steps["loss"] if v is not None and np.isfinite(v))
        assert len(client.get_metric_history(logged.info.run_id, "step_loss")) == finite_steps
        paths = {a.path for a in client.list_artifacts(logged.info.run_id)}
        assert "model" not in paths and {"plots", "training"} <= paths
        assert {a.path for a in client.list_artifacts(logged.info.run_id, "training")} >= {
            "training/guard.json"
        }
        assert client.search_registered_models() == []
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


def test_dead_gradient_model_trips_vanishing(local_ray, manifest, workdir):
    # a user's factory by import path (the Ray workers import tests.unit.user_models: user_python_paths)
    spec = base_spec(guards={"vanishing_steps": 12}, sync_every_k_steps=4,
                     model="tests.unit.user_models:dead_relu", model_kwargs={"hidden": 8})
    result = run(manifest, spec, workdir, "dead")
    assert result.status == "diverged", (result.status, result.error)
    assert result.guard["kind"] == "vanishing_gradient" and result.guard["step"] == 12
    assert result.run_state["stopped_at_step"] == 12
    assert "vanishing" in result.error


# ---------------------------------------------------------------------------------------------- batch modes
def test_full_batch_converges(local_ray, manifest, workdir):
    # with the learning-rate sensitivity check on (in the driver, before Ray starts)
    spec = base_spec(
        batch_mode="full", lr=0.3, epochs=25, sensitivity={"enabled": True, "epochs": 15, "max_spread": 0.1}
    )
    result = run(manifest, spec, workdir, "full")
    assert result.status == "completed", result.error
    sens = result.sensitivity
    assert sens["status"] == "passed", sens
    assert sens["lrs"] == pytest.approx([0.15, 0.3, 0.6]) and len(sens["values"]) == 3
    assert result.health["sensitivity_status"] == "passed"
    assert result.health["sensitivity_spread"] == pytest.approx(sens["spread"])
    assert result.health["steps"] == 25  # one step per epoch
    assert result.history[-1]["batch_rows"] == result.split["train_rows"]
    assert result.metrics["val_roc_auc"] > 0.98
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]


def test_single_sample_sgd_converges(local_ray, tiny_manifest, workdir):
    spec = base_spec(batch_mode="sgd", optimizer="sgd", lr=0.05, momentum=0.0, epochs=2)
    result = run(tiny_manifest, spec, workdir, "sgd")
    assert result.status == "completed", result.error
    assert result.history[-1]["batch_rows"] == 1
    assert result.health["steps"] == 2 * result.split["train_rows"]
    assert result.metrics["val_roc_auc"] > 0.95


# ---------------------------------------------------------------------------------------------- restart
def test_resume_after_a_killed_worker(local_ray, manifest, workdir):
    marker = workdir / "killed_once"
    spec = base_spec(epochs=3, max_failures=1, num_workers=2, cpus_per_worker=0.5)
    result = run(
        manifest,
        spec,
        workdir,
        "killed",
        fault_injection={"epoch": 2, "rank": 1, "marker": str(marker), "mode": "exit"},
    )
    assert marker.exists(), "the fault was not injected"
    assert result.status == "completed", result.error
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.health["restarts"] == 1
    resume = result.run_state["resumes"][0]
    assert resume["from_epoch"] == 1 and resume["world_size"] == 2
    steps_per_epoch = result.history[0]["steps"]
    assert result.steps["step"] == list(range(1, 3 * steps_per_epoch + 1))  # epoch 2 redone, not duplicated
    # each rank's own guard loss window is checkpointed (a resumed rank puts its own back, not the mean)
    windows = result.run_state["guard_loss_windows"]
    assert len(windows) == 2 and all(len(w) == min(spec.guards.spike_window, result.health["steps"]) for w in windows)
    assert windows[0] != windows[1]
    assert result.metrics["val_roc_auc"] > 0.95
