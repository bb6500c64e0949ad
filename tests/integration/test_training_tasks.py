"""``run_training`` on real Ray Train (local CPU workers) for the non-binary tasks and for user code, logged
to MLflow (sqlite store) and loaded back as a pyfunc that returns the task's scores.

* regression with a user's model factory (``tests.unit.user_models:tiny_net`` + kwargs): the workers import
  the user's module (``user_python_paths``), the model directory scores on the label's scale;
* multiclass with a factory in a module of a "DAGs folder" outside the working directory and outside the
  workers' default ``sys.path`` (only the training config's ``python_paths`` lets the workers import it):
  ``(N, K)`` probabilities;
* a user's ``Task`` subclass (labels ``"+"``/``"-"``) with the built-in logistic model.

One local Ray instance serves the module; each TorchTrainer run costs ~15-25 s here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gd_provider.core.data import write_dataset
from gd_provider.core.training.runner import MODEL_DIR, TASK_FILE, holdout_frame, run_training
from gd_provider.core.training.spec import TrainingSpec

pytestmark = pytest.mark.integration

N_ROWS = 2400
NUMERIC = ["f0", "f1", "f2", "f3"]
CLASSES = ["low", "mid", "high"]


def frame(n: int = N_ROWS, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(NUMERIC)))
    df = pd.DataFrame(x, columns=NUMERIC)
    df["shop"] = rng.choice(["a", "b", "c"], n)
    # daily-ish timestamps that tie: the key column orders them
    df["ts"] = pd.Timestamp("2025-01-01", tz="UTC") + pd.to_timedelta(np.arange(n) // 8, unit="h")
    df["row_id"] = [f"r{i:06d}" for i in range(n)]
    df["amount"] = 3.0 * x[:, 0] - 2.0 * x[:, 1] + 1.5 * (df["shop"] == "b") + 100.0 + rng.normal(0, 1.0, n)
    df["band"] = np.array(CLASSES)[np.digitize(x[:, 0] - 0.5 * x[:, 1], [-0.6, 0.6])]
    df["sign"] = np.where(x[:, 0] + 0.5 * x[:, 2] > 0, "+", "-")
    df["flag"] = (x[:, 0] + 0.8 * x[:, 3] + rng.normal(0, 0.7, n) > 1.3).astype(int)  # ~15 % positives
    return df


def spec_for(label: str, **overrides) -> TrainingSpec:
    base = TrainingSpec(numeric_features=NUMERIC, categorical_features=["shop"], label=label, timestamp_column="ts",
                        key_columns=["row_id"], hidden_sizes=[16], lr=0.01, batch_size=64, epochs=6, seed=5,
                        device="cpu")
    return base.with_overrides(overrides)


DAGS_MODULE = "gd_it_dags_models"
DAGS_MODULE_SOURCE = """
from torch import nn


def wide_net(input_dim, output_dim, *, width=24):
    return nn.Sequential(nn.Linear(input_dim, width), nn.ReLU(), nn.Linear(width, output_dim))
"""
SPECS: dict[str, TrainingSpec] = {}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("training_tasks")


@pytest.fixture(scope="module", autouse=True)
def specs(workdir):
    """The specs; the multiclass one names a factory in a folder only this process has on its sys.path."""
    import sys

    dags = workdir / "dags_folder"
    dags.mkdir()
    (dags / f"{DAGS_MODULE}.py").write_text(DAGS_MODULE_SOURCE)
    sys.path.insert(0, str(dags))
    SPECS.update({
        # a declared business tolerance: within 1.0 of the amount
        "regression": spec_for("amount", task="regression", model="tests.unit.user_models:tiny_net",
                               model_kwargs={"hidden": 12, "activation": "tanh"},
                               operating_point={"tolerance": {"abs": 1.0}}),
        # "high" is predicted only at a probability that gave 97 % precision on the validation split
        "multiclass": spec_for("band", task="multiclass", task_options={"classes": CLASSES},
                               model=f"{DAGS_MODULE}:wide_net", model_kwargs={"width": 20},
                               early_stopping_patience=3, early_stopping_metric="val_accuracy",
                               operating_point={"min_precision": {"high": 0.97}}),
        "user_task": spec_for("sign", task="tests.unit.user_models:SignTask", model="logistic", hidden_sizes=[]),
        "operating_point": spec_for("flag", operating_point={"max_fpr": 0.05, "calibration": "platt"}),
    })
    yield SPECS
    sys.path.remove(str(dags))
    sys.modules.pop(DAGS_MODULE, None)


@pytest.fixture(scope="module")
def manifest(workdir):
    return write_dataset(frame(), str(workdir / "data" / "tasks.parquet"), sort_by=["ts", "row_id"],
                         timestamp_column="ts")


@pytest.fixture(scope="module")
def results(local_ray, manifest, workdir, specs):
    import ray

    @ray.remote(num_cpus=0.01)
    def importable() -> bool:
        import importlib.util

        return importlib.util.find_spec(DAGS_MODULE) is not None

    assert not ray.get(importable.remote())  # a Ray worker cannot import the DAGs-folder module by itself
    return {name: run_training(manifest, spec, storage_path=str(workdir / "ray"), run_name=name)
            for name, spec in SPECS.items()}


@pytest.fixture
def tracking(workdir):
    """The module's sqlite store as the tracking URI of this test (the suite resets it after each test)."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("gd-training-tasks")
    try:
        yield experiment.experiment_id if experiment else mlflow.create_experiment(
            "gd-training-tasks", artifact_location=str(workdir / "artifacts"))
    finally:
        mlflow.set_tracking_uri(None)


def _log_and_load(result, spec, manifest, experiment_id, name):
    import mlflow

    from gd_provider.core.training.pyfunc import ModelScorer, log_training_run

    out = log_training_run(result, spec, manifest.to_dict(), experiment_id=experiment_id, run_name=name)
    holdout = holdout_frame(manifest, spec)
    expected = ModelScorer(result.model_dir).predict_scores(holdout)
    for uri in (out["model_uri"], out["run_model_uri"]):
        predicted = np.asarray(mlflow.pyfunc.load_model(uri).predict(holdout))
        assert predicted.shape == expected.shape
        np.testing.assert_allclose(predicted, expected, rtol=0, atol=1e-9)
    return out, holdout, expected


def test_regression_with_a_user_factory(results, manifest, tracking):
    from mlflow.tracking import MlflowClient

    result, spec = results["regression"], SPECS["regression"]
    assert result.status == "completed", result.error
    assert set(result.metrics) == {"epoch", "val_rmse", "val_mae", "val_r2", "val_loss", "train_loss",
                                   "val_op_within_tolerance"}
    point = result.task["state"]["operating_point"]
    assert point["tolerance"] == {"abs": 1.0, "rel": 0.0}
    assert 0.5 < point["validation"]["within_tolerance"] == result.metrics["val_op_within_tolerance"] <= 1
    assert result.metrics["val_r2"] > 0.8, result.metrics
    assert Path(result.model_dir).name == MODEL_DIR
    task_json = json.loads((Path(result.model_dir) / TASK_FILE).read_text())
    assert task_json["task"] == "regression" and task_json == result.task
    assert task_json["state"]["mean"] == pytest.approx(100.0, abs=1.0) and task_json["state"]["std"] > 2
    assert result.model["factory"] == "tests.unit.user_models:tiny_net"
    assert result.model["kwargs"] == {"hidden": 12, "activation": "tanh"}
    assert result.model["code_version"]["module"] == "tests.unit.user_models"

    out, holdout, expected = _log_and_load(result, spec, manifest, tracking, "regression")
    assert expected.shape == (len(holdout),)
    assert np.sqrt(np.mean((expected - holdout["amount"].to_numpy()) ** 2)) < 0.5 * holdout["amount"].std()
    assert out["task"] == result.task and out["model"] == result.model
    run = MlflowClient().get_run(out["mlflow_run_id"])
    assert run.data.tags["gd.task"] == "regression"
    assert run.data.tags["gd.model.factory"] == "tests.unit.user_models:tiny_net"
    assert json.loads(run.data.tags["gd.model.kwargs"]) == {"hidden": 12, "activation": "tanh"}
    assert json.loads(run.data.tags["gd.model.code_version"]) == result.model["code_version"]
    assert run.data.params["task"] == "regression" and json.loads(run.data.params["task.state"]) == result.task[
        "state"]
    history = MlflowClient().get_metric_history(run.info.run_id, "val_r2")
    assert [m.step for m in history] == list(range(1, spec.epochs + 1))


def test_multiclass_scores_are_class_probabilities(results, manifest, tracking):
    result, spec = results["multiclass"], SPECS["multiclass"]
    assert result.status == "completed", result.error
    assert result.model["factory"] == f"{DAGS_MODULE}:wide_net" and result.model["kwargs"] == {"width": 20}
    assert result.metrics["val_accuracy"] > 0.75, result.metrics
    assert result.metrics["val_accuracy"] == max(h["val_accuracy"] for h in result.history)  # the best epoch
    assert result.holdout["labels"]["rows"] == result.holdout["rows"] and "positives" not in result.holdout
    _, holdout, proba = _log_and_load(result, spec, manifest, tracking, "multiclass")
    assert proba.shape == (len(holdout), 3) and np.allclose(proba.sum(axis=1), 1.0)
    truth = holdout["band"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    assert float(np.mean(proba.argmax(axis=1) == truth)) > 0.7
    # the per-class threshold chosen on validation, saved with the model and applied by its scorer
    from mlflow.tracking import MlflowClient

    from gd_provider.core.training.pyfunc import ModelScorer
    from gd_provider.core.training.runner import split_for_spec

    point = result.task["state"]["operating_point"]
    assert set(point["class_thresholds"]) == {"high"} and 0 < point["class_thresholds"]["high"] < 1
    assert point["validation"]["precision_high"] >= 0.97 and result.metrics["val_op_precision_high"] >= 0.97
    scorer = ModelScorer(result.model_dir)
    assert scorer.serving_rule["class_thresholds"] == point["class_thresholds"]
    _, val, _ = split_for_spec(pd.read_parquet(manifest.uri), spec)
    decided = scorer.decisions(val)
    val_truth = val["band"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    high = decided == CLASSES.index("high")
    assert high.any() and float(np.mean(val_truth[high] == CLASSES.index("high"))) >= 0.97
    # the rule: "high" only at or above its threshold; a row whose argmax is "high" below it goes elsewhere
    p_high = scorer.predict_scores(val)[:, CLASSES.index("high")]
    cut = point["class_thresholds"]["high"]
    assert (p_high[high] >= cut).all() and not (decided[p_high < cut] == CLASSES.index("high")).any()
    out = MlflowClient().search_runs([tracking], "tags.`mlflow.runName` = 'multiclass'")[0]
    assert json.loads(out.data.tags["gd.operating_point"])["class_thresholds"] == point["class_thresholds"]


def test_a_user_task_class_trains_on_ray_workers(results, manifest, tracking):
    from mlflow.tracking import MlflowClient

    result, spec = results["user_task"], SPECS["user_task"]
    assert result.status == "completed", result.error
    assert result.task["task"] == "tests.unit.user_models:SignTask" and "pos_weight" in result.task["state"]
    assert result.metrics["val_roc_auc"] > 0.95
    assert result.model["task_code_version"]["module"] == "tests.unit.user_models"
    out, holdout, proba = _log_and_load(result, spec, manifest, tracking, "user_task")
    assert proba.shape == (len(holdout),) and np.all((proba >= 0) & (proba <= 1))
    tags = MlflowClient().get_run(out["mlflow_run_id"]).data.tags
    assert tags["gd.task"] == "tests.unit.user_models:SignTask"
    assert json.loads(tags["gd.task.code_version"])["module"] == "tests.unit.user_models"


def test_a_binary_model_serves_at_the_operating_point_chosen_on_validation(results, manifest, tracking):
    from mlflow.tracking import MlflowClient

    from gd_provider.core.training.pyfunc import ModelScorer
    from gd_provider.core.training.runner import split_for_spec

    result, spec = results["operating_point"], SPECS["operating_point"]
    assert result.status == "completed", result.error
    point = result.task["state"]["operating_point"]
    assert point["objective"] == {"max_fpr": 0.05, "calibration": "platt"} and 0 < point["threshold"] < 1
    assert point["validation"]["fpr"] <= 0.05 and point["validation"]["recall"] > 0.3
    assert point["validation"]["ece_after"] <= point["validation"]["ece_before"]
    assert result.metrics["op_threshold"] == point["threshold"] and result.metrics["val_op_fpr"] <= 0.05
    # the scorer applies the rule: calibrated scores, decisions at the saved threshold, as measured in training
    scorer = ModelScorer(result.model_dir)
    assert scorer.serving_threshold == point["threshold"]
    _, val, _ = split_for_spec(pd.read_parquet(manifest.uri), spec)
    decided = scorer.decisions(val)
    negatives = val["flag"].to_numpy() == 0
    assert decided[negatives].mean() == pytest.approx(point["validation"]["fpr"], abs=1e-9)
    out, holdout, _ = _log_and_load(result, spec, manifest, tracking, "operating_point")  # pyfunc == scorer
    client = MlflowClient()
    run = client.get_run(out["mlflow_run_id"])
    assert run.data.tags["gd.operating_point"].startswith("{") and "max_fpr" in run.data.tags["gd.operating_point"]
    assert run.data.params["spec.operating_point.max_fpr"] == "0.05"
