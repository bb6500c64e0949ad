"""The release operators on regression and multiclass models in a real MLflow registry (SQLite): the
evaluation gate scores both models with the task's metrics, the smoke test judges the canary with the task's
checks, prediction drift compares what the task compares, and validation checks the task's labels.

The models are small ``mlflow.pyfunc.PythonModel`` stand-ins returning the task's scores (a 1-D value for
regression, an (N, K) probability matrix in the order of ``task_options.classes`` for multiclass), logged
with a signature so only their input columns are handed to them."""

from __future__ import annotations

import logging
import re

import mlflow
import numpy as np
import pandas as pd
import pytest
from airflow.sdk.exceptions import AirflowFailException
from mlflow.models import infer_signature

from gd_provider.core import registry
from gd_provider.core.data import write_dataset
from gd_provider.core.lineage import DATASET_SHA256, DATASET_URI
from gd_provider.core.training.runner import holdout_frame, holdout_info
from gd_provider.core.training.spec import TrainingSpec
from gd_provider.operators.drift import DriftCheckOperator
from gd_provider.operators.registry import ModelEvaluationGateOperator, ModelSmokeTestOperator
from gd_provider.operators.validation import DataValidationOperator

from ..support import fake_context

pytestmark = pytest.mark.integration
FEATURES = ["x1", "x2"]
CLASSES = ["ok", "late", "lost"]
BASE = {"numeric_features": FEATURES, "categorical_features": [], "timestamp_column": "event_timestamp",
        "key_columns": ["shipment_id"]}
REGRESSION = TrainingSpec.from_dict({**BASE, "label": "delay", "task": "regression"})
MULTICLASS = TrainingSpec.from_dict({**BASE, "label": "status", "task": "multiclass",
                                     "task_options": {"classes": CLASSES}})


class LinearValue(mlflow.pyfunc.PythonModel):
    """A stand-in regression model: ``coef * x1 + bias`` on the label's scale."""

    def __init__(self, coef: float = 3.0, bias: float = 0.0) -> None:
        self.coef, self.bias = coef, bias

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        assert list(model_input.columns) == FEATURES, list(model_input.columns)  # only its input columns
        return self.coef * model_input["x1"].to_numpy(dtype=float) + self.bias


class ThresholdClasses(mlflow.pyfunc.PythonModel):
    """A stand-in multiclass model: class probabilities from where x1 falls (``cuts`` between the classes)."""

    def __init__(self, cuts: tuple[float, float] = (-0.5, 0.5)) -> None:
        self.cuts = cuts

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        assert list(model_input.columns) == FEATURES, list(model_input.columns)
        idx = np.digitize(model_input["x1"].to_numpy(dtype=float), self.cuts)
        return np.eye(len(CLASSES))[idx] * 0.9 + 0.1 / len(CLASSES)


def _frame(n: int = 600, seed: int = 0, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1 = rng.normal(shift, 1.0, n)
    return pd.DataFrame({
        "shipment_id": [f"s{seed}-{i:05d}" for i in range(n)],
        "event_timestamp": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(np.arange(n) * 60, "s"),
        "x1": x1,
        "x2": rng.normal(0.0, 1.0, n),
        "delay": 3.0 * x1 + rng.normal(0.0, 0.3, n),
        "status": np.array(CLASSES, dtype=object)[np.digitize(x1 + rng.normal(0, 0.1, n), (-0.5, 0.5))],
    })


@pytest.fixture
def client(mlflow_config):
    from gd_provider.hooks.mlflow import MlflowHook

    return MlflowHook().get_config().client()


@pytest.fixture
def name(request) -> str:
    return "m_" + re.sub(r"\W", "_", request.node.name)


@pytest.fixture
def experiment(client, name):
    from gd_provider.hooks.mlflow import MlflowHook

    return registry.ensure_experiment(client, name, MlflowHook().get_config().artifact_root)


def _log(experiment: str, model: mlflow.pyfunc.PythonModel) -> tuple[str, str]:
    example = _frame(20)[FEATURES]
    with mlflow.start_run(experiment_id=experiment) as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=model, pip_requirements=["mlflow"],
                                       signature=infer_signature(example, model.predict(None, example)))
    return info.model_uri, run.info.run_id


def _training(experiment: str, dataset: dict, spec: TrainingSpec, model: mlflow.pyfunc.PythonModel) -> dict:
    uri, run_id = _log(experiment, model)
    return {"model_uri": uri, "mlflow_run_id": run_id, "spec": spec.to_dict(),
            "holdout": holdout_info(holdout_frame(dataset, spec), spec)}


def _champion(client, experiment, name, model, night: int, tags: dict | None = None) -> str:
    uri, run_id = _log(experiment, model)
    version, _ = registry.register_model(client, name, uri, run_key=f"d/n{night}", run_id=run_id, tags=tags or {})
    current = registry.get_alias_version(client, name, "champion")
    registry.promote(client, name, version, actor="scheduler", reason="blessed", dag_run=f"d/n{night}",
                     expected_current=current)
    return version


def _gate(name: str, dataset: dict, training: dict, policy: dict, **kw) -> ModelEvaluationGateOperator:
    return ModelEvaluationGateOperator(task_id="evaluate", dataset=dataset, training=training, model_name=name,
                                       policy=policy, **kw)


def _data(gd_home, file: str, **kw) -> dict:
    return write_dataset(_frame(**kw), str(gd_home / file)).to_dict()


# ----------------------------------------------------------------------------------------- regression
def test_regression_gate_scores_both_models_with_the_tasks_metrics(gd_home, client, experiment, name, caplog):
    dataset = _data(gd_home, "train.parquet", seed=1)
    policy = {"value_thresholds": {"rmse": 1.0, "r2": 0.8}, "max_abs_regression": {"rmse": 0.1}}
    good = _training(experiment, dataset, REGRESSION, LinearValue())
    with caplog.at_level(logging.WARNING):
        first = _gate(name, dataset, good, policy, task="regression").execute(fake_context(run_id="n1"))
    assert first["blessed"] and first["task"] == "regression" and first["champion_version"] is None
    metrics = first["challenger_metrics"]
    assert {"rmse", "mae", "r2", "abs_error_p50", "abs_error_p90"} <= set(metrics)
    assert metrics["rmse"] == pytest.approx(0.3, abs=0.1) and metrics["r2"] > 0.95
    assert not [r for r in caplog.records if "extra inputs" in r.getMessage().lower()]
    # a champion that is as good: a challenger twice as steep loses on rmse and is rejected, with the reason
    champion = _champion(client, experiment, name, LinearValue(), night=1)
    steep = _training(experiment, dataset, REGRESSION, LinearValue(coef=6.0))
    d = _gate(name, dataset, steep, policy, task="regression").execute(fake_context(run_id="n2"))
    assert not d["blessed"] and d["champion_version"] == champion
    assert d["champion_metrics"]["rmse"] == pytest.approx(metrics["rmse"])
    assert any(r.startswith("rmse ") and f"vs champion v{champion}" in r and r.endswith("FAIL") for r in d["reasons"])
    assert any(r.startswith("r2 ") and r.endswith("FAIL") for r in d["reasons"])
    # a binary metric in a policy: parsed as binary (no task given), refused against what was trained
    with pytest.raises(AirflowFailException, match="misconfigured for the regression task: value_thresholds: "
                                                   "metric 'roc_auc' is not a regression metric"):
        _gate(name, dataset, good, {"value_thresholds": {"roc_auc": 0.7}}).execute(fake_context(run_id="n2"))


def test_regression_smoke_test_judges_predictions_and_their_shift(gd_home, client, experiment, name):
    canary = _data(gd_home, "canary.parquet", seed=2)
    dataset = _data(gd_home, "train.parquet", seed=1)
    training = _training(experiment, dataset, REGRESSION, LinearValue())
    v1 = _champion(client, experiment, name, LinearValue(), night=1)
    smoke = ModelSmokeTestOperator(task_id="smoke_test", dataset=canary, model_name=name, training=training,
                                   canary_rows=200, latency_probes=5, prediction_bounds=(-20.0, 20.0))
    out = smoke.execute(fake_context())
    assert out["task"] == "regression" and out["previous_champion"] == "none" and out["previous_mean_prediction"] is None
    assert out["mean_prediction"] == pytest.approx(0.0, abs=0.5)
    v2 = _champion(client, experiment, name, LinearValue(bias=0.5), night=2)  # a small move: passes
    out = smoke.execute(fake_context())
    assert out["version"] == v2 and out["previous_champion"] == v1
    assert out["mean_prediction"] - out["previous_mean_prediction"] == pytest.approx(0.5)
    _champion(client, experiment, name, LinearValue(bias=25.0), night=3)  # far off: both checks fail
    with pytest.raises(AirflowFailException) as err:
        smoke.execute(fake_context())
    message = str(err.value)
    assert "(v3, regression task) failed" in message and "predictions outside [-20.0, 20.0]" in message
    assert f"vs previous champion v{v2}'s" in message and "standard deviations, above 1.0" in message
    # the same task from an explicit argument; a model that does not say, and no task: judged as binary
    explicit = ModelSmokeTestOperator(task_id="smoke_test", dataset=canary, model_name=name, task="regression",
                                      latency_probes=5, max_mean_shift_std=None)
    assert explicit.execute(fake_context())["task"] == "regression"
    with pytest.raises(AirflowFailException, match=r"binary task\) failed: scores outside \[0, 1\]"):
        ModelSmokeTestOperator(task_id="smoke_test", dataset=canary, model_name=name,
                               latency_probes=5).execute(fake_context())


# ----------------------------------------------------------------------------------------- multiclass
def test_multiclass_gate_on_accuracy_and_a_class_recall(gd_home, client, experiment, name):
    dataset = _data(gd_home, "train.parquet", seed=3)
    policy = {"value_thresholds": {"accuracy": 0.8, "recall_late": 0.7}, "max_abs_regression": {"macro_f1": 0.02}}
    good = _training(experiment, dataset, MULTICLASS, ThresholdClasses())
    first = _gate(name, dataset, good, policy, task="multiclass",
                  task_options={"classes": CLASSES}).execute(fake_context(run_id="n1"))
    assert first["blessed"] and first["task"] == "multiclass"
    assert {"accuracy", "macro_f1", "log_loss", "recall_ok", "recall_late", "recall_lost",
            "precision_late"} <= set(first["challenger_metrics"])
    champion = _champion(client, experiment, name, ThresholdClasses(), night=1)
    # a challenger that calls most "late" shipments "ok"
    blind = _training(experiment, dataset, MULTICLASS, ThresholdClasses(cuts=(0.3, 0.5)))
    d = _gate(name, dataset, blind, policy, task="multiclass", task_options={"classes": CLASSES}).execute(
        fake_context(run_id="n2"))
    assert not d["blessed"] and d["champion_version"] == champion
    assert any(r.startswith("recall_late ") and r.endswith("FAIL") for r in d["reasons"])
    assert any(r.startswith("macro_f1 ") and f"champion v{champion}" in r and r.endswith("FAIL") for r in d["reasons"])


def test_multiclass_gate_refuses_a_holdout_of_one_class(gd_home, client, experiment, name):
    frame = _frame(seed=4)
    frame.loc[frame.index[-200:], "status"] = "ok"  # the latest rows - the holdout - are all "ok"
    dataset = write_dataset(frame, str(gd_home / "train.parquet")).to_dict()
    training = _training(experiment, dataset, MULTICLASS, ThresholdClasses())
    with pytest.raises(AirflowFailException, match=r"refuses to decide \(multiclass task, \d+ holdout rows\): the "
                                                   "holdout has only class 'ok'"):
        _gate(name, dataset, training, {"value_thresholds": {"accuracy": 0.5}}, task="multiclass",
              task_options={"classes": CLASSES}).execute(fake_context())


def test_multiclass_smoke_test_compares_class_shares_with_the_previous_champion(gd_home, client, experiment, name):
    canary = _data(gd_home, "canary.parquet", seed=5)
    training = {"spec": MULTICLASS.to_dict()}
    v1 = _champion(client, experiment, name, ThresholdClasses(), night=1)
    smoke = ModelSmokeTestOperator(task_id="smoke_test", dataset=canary, model_name=name, training=training,
                                   latency_probes=5)
    shares = smoke.execute(fake_context())["class_shares"]
    assert set(shares) == set(CLASSES) and sum(shares.values()) == pytest.approx(1.0)
    _champion(client, experiment, name, ThresholdClasses(cuts=(0.8, 1.5)), night=2)  # far more "ok"
    with pytest.raises(AirflowFailException, match=rf"multiclass task\) failed: predicted class shares moved vs "
                                                   rf"previous champion v{v1} on the same canary by more than 0.1: "
                                                   r"'ok' \+0\.\d+"):
        smoke.execute(fake_context())


def test_multiclass_prediction_drift_compares_the_predicted_class(gd_home, client, experiment, name):
    ref = write_dataset(_frame(seed=6), str(gd_home / "ref.parquet"))
    _champion(client, experiment, name, ThresholdClasses(), night=1,
              tags={DATASET_URI: ref.uri, DATASET_SHA256: ref.sha256})
    drifted = _data(gd_home, "cur.parquet", seed=7, shift=1.5)
    op = DriftCheckOperator(task_id="drift_check", dataset=drifted, model_name=name, numeric_columns=FEATURES,
                            task="multiclass", task_options={"classes": CLASSES})
    out = op.execute(fake_context())
    prediction = out["prediction_drift"]
    assert prediction["kind"] == "categorical" and prediction["method"] == "jensenshannon"
    assert prediction["task"] == "multiclass" and prediction["drifted"] is True
    assert prediction["current_shares"]["lost"] > prediction["reference_shares"]["lost"]
    assert "predicted class shares" in out["message"]


# ----------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("task", "options", "column", "bad", "check"),
    [
        ("regression", None, "delay", ["1.5", "late"], "task:numeric_label"),
        ("regression", None, "delay", [1.5, np.nan], "task:regression_label_not_null"),
        ("multiclass", {"classes": CLASSES}, "status", ["ok", "stolen"], "task:declared_classes"),
        ("multiclass", {"classes": CLASSES}, "status", ["ok", None], "task:multiclass_label_not_null"),
        ("binary", None, "delay", [0.0, np.nan], "task:binary_label_not_null"),
    ],
)
def test_validation_stops_labels_the_task_cannot_take(gd_home, task, options, column, bad, check):
    frame = _frame(40, seed=8)
    good = write_dataset(frame.assign(delay=(frame["x1"] > 0).astype("int64")) if task == "binary" else frame,
                         str(gd_home / "good.parquet")).to_dict()
    op = DataValidationOperator(task_id="validate", dataset=good, label_column=column, task=task,
                                task_options=options, log_to_mlflow=False)
    assert op.execute(fake_context())["success"]
    values = frame[column].astype(str if any(isinstance(b, str) for b in bad) else object).astype(object)
    values.iloc[: len(bad)] = bad
    broken = write_dataset(frame.assign(**{column: values}), str(gd_home / "bad.parquet")).to_dict()
    op = DataValidationOperator(task_id="validate", dataset=broken, label_column=column, task=task,
                                task_options=options, log_to_mlflow=False)
    with pytest.raises(AirflowFailException, match=rf"\({column}\) \[{check}\]"):
        op.execute(fake_context())
