"""The training path through the task plug-in and the model factory, in process (no Ray, no MLflow).

* each built-in task trains with ``fit_plain`` to a sensible metric; binary is bit-for-bit the engine it
  was before tasks (a reference loop with the former ``LogitModel`` / ``BCEWithLogitsLoss`` / ``evaluate``);
* a user's factory (with kwargs) and a user's ``Task`` subclass, by import path;
* ``run_training``'s input checks per task (labels, holdout, key columns) before Ray starts, the arrays and
  split record it writes, and ``ModelScorer`` on a model directory with ``task.json``;
* lineage / MLflow tags of the task and the model, and the curves' metric per task.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from gd_provider.core.data import write_dataset
from gd_provider.core.tasks import get_task
from gd_provider.core.training import runner as runner_mod
from gd_provider.core.training.loop import (
    MODEL_FILE,
    TRAIN_ARRAYS,
    VAL_ARRAYS,
    epoch_seed,
    fit_plain,
    load_arrays,
    load_labels,
    make_optimizer,
    ranking_metrics,
    seed_everything,
)
from gd_provider.core.training.preprocess import Preprocessor
from gd_provider.core.training.pyfunc import FraudScorer, ModelLoadError, ModelScorer, curve_metric
from gd_provider.core.training.runner import TrainingInputError, TrainingResult, run_training
from gd_provider.core.training.sensitivity import run_sensitivity
from gd_provider.core.training.spec import SpecError, TrainingSpec
from tests.unit import user_models

FEATURES = ["a", "b", "c", "d"]


def data(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, len(FEATURES))).astype(np.float32)


def spec_for(task: str = "binary", **overrides) -> TrainingSpec:
    base = TrainingSpec(numeric_features=FEATURES, categorical_features=[], label="y", timestamp_column="ts",
                        hidden_sizes=[16], batch_size=64, epochs=5, seed=7, device="cpu", task=task)
    return base.with_overrides(overrides)


X, XV = data(1500), data(500, seed=1)


def binary_labels(x: np.ndarray) -> np.ndarray:
    return (x[:, 0] + 0.5 * x[:, 1] > 0.3).astype(np.float32)


def linear_target(x: np.ndarray) -> np.ndarray:
    return (3.0 * x[:, 0] - 2.0 * x[:, 1] + 0.5 * x[:, 2] + 40.0).astype(np.float32)


def three_classes(x: np.ndarray) -> np.ndarray:
    return np.digitize(x[:, 0] - 0.5 * x[:, 1], [-0.6, 0.6]).astype(np.float32)  # class indices 0, 1, 2


# ---------------------------------------------------------------------------------------------- binary: as before
class FormerLogitModel(nn.Module):
    """``core.training.model.LogitModel`` before tasks (body + squeeze)."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x):
        return self.body(x).squeeze(-1)


def former_build_model(spec: TrainingSpec, input_dim: int) -> nn.Module:
    layers: list[nn.Module] = []
    width = input_dim
    for hidden in spec.hidden_sizes:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        if spec.dropout > 0:
            layers.append(nn.Dropout(spec.dropout))
        width = hidden
    layers.append(nn.Linear(width, 1))
    return FormerLogitModel(nn.Sequential(*layers))


@torch.no_grad()
def former_evaluate(module, x, y, loss_fn):
    """``loop.evaluate`` before tasks: (loss, ROC AUC, PR AUC)."""
    module.eval()
    try:
        logits = torch.cat([module(x[i : i + 65536]) for i in range(0, len(x), 65536)])
        loss = float(loss_fn(logits.float(), y).item())
        probs = torch.sigmoid(logits.float()).cpu().numpy()
    finally:
        module.train()
    roc, pr = ranking_metrics(y.cpu().numpy(), probs)
    return loss, roc, pr


def former_loop(spec: TrainingSpec, x, y, xv, yv, pos_weight: float):
    """The former engine's work by hand (BCEWithLogitsLoss(pos_weight), same seeds, same batches)."""
    seed_everything(spec.seed)
    model = former_build_model(spec, x.shape[1])
    opt = make_optimizer(spec, model.parameters())
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(float(pos_weight)))
    xs, ys, xvt, yvt = (torch.from_numpy(np.ascontiguousarray(a)) for a in (x, y, xv, yv))
    params = [p for p in model.parameters() if p.requires_grad]
    bs, n = spec.batch_size, len(xs)
    history, losses, norms = [], [], []
    model.train()
    for epoch in range(1, spec.epochs + 1):
        s = epoch_seed(spec.seed, 0, epoch)
        torch.manual_seed(s)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(s))
        epoch_losses = []
        for i in range(math.ceil(n / bs)):
            idx = order[i * bs : (i + 1) * bs]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xs[idx]), ys[idx])
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, spec.grad_clip_norm)
            opt.step()
            epoch_losses.append(float(loss.detach().float()))
            norms.append(float(norm.float()))
        rows = np.full(len(epoch_losses), float(bs))
        rows[-1] = n - bs * (len(epoch_losses) - 1)
        val_loss, roc, pr = former_evaluate(model, xvt, yvt, loss_fn)
        history.append({"train_loss": float(np.sum(np.asarray(epoch_losses) * rows) / np.sum(rows)),
                        "val_loss": val_loss, "val_roc_auc": roc, "val_pr_auc": pr})
        losses += epoch_losses
    return history, losses, norms, model


def test_binary_training_is_bit_for_bit_the_former_engine():
    spec = spec_for(dropout=0.1, hidden_sizes=[16, 8], epochs=3)
    y, yv = binary_labels(X), binary_labels(XV)
    fit = fit_plain(spec, X, y, XV, yv)  # state fitted on the training labels: pos_weight = negatives / positives
    positives = float(y.sum())  # as the former runner computed it
    assert fit.task_state == {"pos_weight": (len(y) - positives) / positives}
    history, losses, norms, model = former_loop(spec, X, y, XV, yv, fit.task_state["pos_weight"])
    assert list(fit.history[0])[:5] == ["epoch", "train_loss", "val_loss", "val_roc_auc", "val_pr_auc"]
    for got, want in zip(fit.history, history, strict=True):
        assert {k: got[k] for k in want} == want  # exact equality: the same floats
    assert fit.steps["loss"] == losses and fit.steps["grad_norm"] == norms
    former, now = model.state_dict(), fit.model.state_dict()
    assert list(former) == list(now)  # body.* keys: model directories of both load the same weights
    assert all(torch.equal(former[k], now[k]) for k in former)
    assert fit.history[-1]["val_roc_auc"] > 0.8


def test_pos_weight_argument_is_the_binary_task_state():
    spec = spec_for(epochs=1)
    y, yv = binary_labels(X), binary_labels(XV)
    a = fit_plain(spec, X, y, XV, yv, pos_weight=2.0)
    b = fit_plain(spec, X, y, XV, yv, task_state={"pos_weight": 2.0})
    assert a.task_state == {"pos_weight": 2.0} and a.history == [dict(h, epoch_seconds=a.history[0]["epoch_seconds"])
                                                                 for h in b.history]
    with pytest.raises(ValueError, match="not both"):
        fit_plain(spec, X, y, XV, yv, pos_weight=2.0, task_state={"pos_weight": 2.0})


# ---------------------------------------------------------------------------------------------- other built-ins
def test_regression_learns_a_linear_target_on_the_labels_scale():
    spec = spec_for("regression", lr=0.01, epochs=10)
    y, yv = linear_target(X), linear_target(XV)
    fit = fit_plain(spec, X, y, XV, yv)
    last = fit.history[-1]
    assert set(last) >= {"val_loss", "val_rmse", "val_mae", "val_r2"} and "val_roc_auc" not in last
    assert last["val_r2"] > 0.9, last
    # the network learned the standardized target; the task's scores are on the label's scale
    state = fit.task_state
    assert state["mean"] == pytest.approx(float(y.astype(np.float64).mean())) and state["std"] > 1
    with torch.no_grad():
        fit.model.eval()
        pred = get_task("regression").scores(fit.model(torch.from_numpy(XV)).double().numpy(), state)
    assert np.sqrt(np.mean((pred - yv) ** 2)) == pytest.approx(last["val_rmse"], rel=1e-4)
    assert last["val_rmse"] < 0.3 * float(np.std(yv))


def test_regression_losses_and_the_default_sensitivity_metric():
    y, yv = linear_target(X), linear_target(XV)
    for loss in ("mae", "huber"):
        fit = fit_plain(spec_for("regression", loss=loss, lr=0.01, epochs=6), X, y, XV, yv)
        assert fit.trip is None and fit.history[-1]["val_r2"] > 0.8, (loss, fit.history[-1])
    spec = spec_for("regression", lr=0.01, sensitivity={"enabled": True, "sample_rows": 600, "epochs": 3,
                                                         "max_spread": 0.5})
    out = run_sensitivity(spec, X, y, XV, yv)
    assert out["metric"] == "val_r2" and out["status"] == "passed", out
    assert all(v > 0 for v in out["values"])


def test_multiclass_accuracy_well_above_chance():
    spec = spec_for("multiclass", task_options={"classes": ["low", "mid", "high"]}, lr=0.01, epochs=8)
    y, yv = three_classes(X), three_classes(XV)
    fit = fit_plain(spec, X, y, XV, yv)
    last = fit.history[-1]
    assert last["val_accuracy"] > 0.8 and last["val_macro_f1"] > 0.7, last  # chance: about 1/3
    assert fit.task_state["train_counts"] == np.bincount(y.astype(int), minlength=3).tolist()
    linears = [m for m in fit.model.modules() if isinstance(m, nn.Linear)]
    assert linears[-1].out_features == 3
    balanced = fit_plain(spec.with_overrides(task_options={"classes": ["low", "mid", "high"],
                                                           "class_weight": "balanced"}), X, y, XV, yv)
    assert len(balanced.task_state["class_weights"]) == 3 and balanced.history[-1]["val_accuracy"] > 0.8


def test_early_stopping_uses_the_tasks_metric_directions():
    from gd_provider.core.training.loop import best_epoch, stop_early

    history = [{"epoch": 1, "val_loss": 0.5, "val_r2": 0.5, "val_rmse": 2.0},
               {"epoch": 2, "val_loss": 0.4, "val_r2": 0.8, "val_rmse": 1.0},
               {"epoch": 3, "val_loss": 0.45, "val_r2": 0.7, "val_rmse": 1.5},
               {"epoch": 4, "val_loss": 0.46, "val_r2": 0.75, "val_rmse": 1.2}]
    by_r2 = spec_for("regression", early_stopping_patience=2, early_stopping_metric="val_r2")
    by_rmse = by_r2.with_overrides(early_stopping_metric="val_rmse")
    assert best_epoch(history, by_r2)["epoch"] == 2 and stop_early(history, by_r2)
    assert best_epoch(history, by_rmse)["epoch"] == 2 and stop_early(history, by_rmse)
    with pytest.raises(SpecError, match="early_stopping_metric"):
        spec_for("regression", early_stopping_metric="val_roc_auc")


# ---------------------------------------------------------------------------------------------- user code
def test_a_user_factory_with_kwargs_trains_binary_and_multiclass():
    y, yv = binary_labels(X), binary_labels(XV)
    spec = spec_for(model="tests.unit.user_models:tiny_net", model_kwargs={"hidden": 5, "activation": "tanh"},
                    lr=0.01)
    fit = fit_plain(spec, X, y, XV, yv)
    assert isinstance(fit.model, user_models.TinyNet)
    assert fit.model.first.out_features == 5 and isinstance(fit.model.act, nn.Tanh)
    assert fit.model.last.out_features == 1  # (N, 1) outputs: the task's loss and scores reshape them
    assert fit.history[-1]["val_roc_auc"] > 0.95
    multi = spec.with_overrides(task="multiclass", task_options={"classes": [0, 1, 2]})
    fit = fit_plain(multi, X, three_classes(X), XV, three_classes(XV))
    assert fit.model.last.out_features == 3 and fit.history[-1]["val_accuracy"] > 0.7


def test_a_factory_that_cannot_be_built_is_named():
    with pytest.raises(ValueError, match=r"model 'tests.unit.user_models:tiny_net' could not be built .*width"):
        fit_plain(spec_for(model="tests.unit.user_models:tiny_net", model_kwargs={"width": 3}), X,
                  binary_labels(X), XV, binary_labels(XV))
    with pytest.raises(ValueError, match="returned str, not a torch.nn.Module"):
        fit_plain(spec_for(model="tests.unit.user_models:not_a_module"), X, binary_labels(X), XV, binary_labels(XV))
    with pytest.raises(SpecError, match=r"model 'tests.unit.nowhere:f': cannot import module"):
        spec_for(model="tests.unit.nowhere:f")


def test_a_user_task_class_trains_on_its_own_labels():
    spec = spec_for("tests.unit.user_models:SignTask", lr=0.01)
    task = spec.task_plugin()
    assert isinstance(task, user_models.SignTask) and task.to_dict()["task"] == "tests.unit.user_models:SignTask"
    labels = pd.Series(np.where(binary_labels(X) > 0, "+", "-"))
    val_labels = pd.Series(np.where(binary_labels(XV) > 0, "+", "-"))
    fit = fit_plain(spec, X, task.encode_labels(labels), XV, task.encode_labels(val_labels))
    assert fit.history[-1]["val_roc_auc"] > 0.95 and "pos_weight" in fit.task_state


# ---------------------------------------------------------------------------------------------- run_training inputs
def frame(n: int = 200, seed: int = 0, label=None) -> pd.DataFrame:
    x = data(n, seed)
    df = pd.DataFrame(x, columns=FEATURES)
    df["ts"] = pd.Timestamp("2025-01-01", tz="UTC") + pd.to_timedelta(np.arange(n), unit="min")
    df["id"] = [f"r{i:05d}" for i in range(n)]
    df["y"] = binary_labels(x).astype("int64") if label is None else label(x)
    return df


@pytest.fixture
def no_ray(monkeypatch):
    """Input checks must fail before Ray; a valid input stops at the (patched) Ray start."""
    import ray

    def must_not_run(*args, **kwargs):
        raise AssertionError("Ray must not start")

    monkeypatch.setattr(runner_mod, "init_local_ray", must_not_run)
    monkeypatch.setattr(ray, "init", must_not_run)


def train(df: pd.DataFrame, tmp_path, spec: TrainingSpec, run_name: str = "run"):
    manifest = write_dataset(df, str(tmp_path / f"{run_name}.parquet"), sort_by=["ts"], timestamp_column="ts")
    return run_training(manifest.to_dict(), spec, storage_path=str(tmp_path / "ray"), run_name=run_name)


@pytest.mark.parametrize(
    ("task", "options", "labels", "needle"),
    [
        ("regression", {}, lambda x: np.where(x[:, 0] > 0, "high", "low"), r"label column 'y' must be numeric "
         r"for the regression task, found object values such as '(high|low)'"),
        ("multiclass", {"classes": ["a", "b"]}, lambda x: np.where(x[:, 0] > 1.5, "c", np.where(x[:, 0] > 0, "a", "b")),
         r"label column 'y' has \d+ value\(s\) outside the declared classes \['a', 'b'\].*'c'"),
        ("binary", {}, lambda x: np.where(x[:, 0] > 0, 2, 0), r"label column 'y' must be 0/1, found values \[.*0\.0.*2\.0\)?\]"),
    ],
    ids=["regression-strings", "multiclass-unknown-class", "binary-not-01"],
)
def test_bad_labels_are_input_errors_naming_the_column(tmp_path, no_ray, task, options, labels, needle):
    with pytest.raises(TrainingInputError, match=needle):
        train(frame(label=labels), tmp_path, spec_for(task, task_options=options))


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression", "tests.unit.user_models:SignTask"])
def test_missing_labels_are_an_input_error_for_every_task(tmp_path, no_ray, task):
    options = {"classes": [0, 1]} if task == "multiclass" else {}
    df = frame(label=lambda x: np.where(x[:, 0] > 0, 1.0, 0.0))
    df.loc[[3, 17], "y"] = np.nan
    with pytest.raises(TrainingInputError, match=r"label column 'y' has 2 missing value\(s\)"):
        train(df, tmp_path, spec_for(task, task_options=options))


def test_holdout_problems_follow_the_task(tmp_path, no_ray):
    df = frame(label=lambda x: np.zeros(len(x), dtype="int64"))
    df.loc[:100, "y"] = 1  # early rows have both classes, the latest (the holdout) only 0
    with pytest.raises(TrainingInputError, match=r"the holdout \(the latest 30 rows, holdout_fraction=0.15\) has "
                       r"only label 0 in column 'y': the evaluation gate needs both classes \(ROC/PR AUC\); use more"):
        train(df, tmp_path, spec_for())
    with pytest.raises(TrainingInputError, match=r"holdout .* has only class 0 in column 'y': the evaluation gate "
                       "needs at least two classes"):
        train(df, tmp_path, spec_for("multiclass", task_options={"classes": [0, 1]}), run_name="multi")
    # regression needs no classes: the same labels reach Ray
    with pytest.raises(AssertionError, match="Ray must not start"):
        train(df, tmp_path, spec_for("regression"), run_name="reg")


def test_a_single_class_training_split_is_an_input_error(tmp_path, no_ray):
    df = frame(label=lambda x: np.zeros(len(x), dtype="int64"))
    df.loc[len(df) - 40 :, "y"] = [0, 1] * 20  # validation / holdout have both classes, training only 0
    with pytest.raises(TrainingInputError, match=r"training split has 0 positive .* pos_weight='auto' needs both"):
        train(df, tmp_path, spec_for())


def test_key_columns_missing_or_needed(tmp_path, no_ray):
    with pytest.raises(TrainingInputError, match=r"'order_id' \(key column, training.key_columns\)"):
        train(frame(), tmp_path, spec_for(key_columns=["id", "order_id"]))
    tied = frame()
    tied["ts"] = pd.Timestamp("2025-01-01", tz="UTC") + pd.to_timedelta(np.arange(len(tied)) // 4, unit="h")
    with pytest.raises(TrainingInputError, match=r"cannot split the dataset by time: .*no key columns are given.*"
                       r"give training.key_columns \(columns that order rows sharing a timestamp"):
        train(tied, tmp_path, spec_for(), run_name="tied")
    with pytest.raises(AssertionError, match="Ray must not start"):  # the same rows with a key column: fine
        train(tied, tmp_path, spec_for(key_columns=["id"]), run_name="keyed")
    holdout = runner_mod.holdout_frame(tied, spec_for(key_columns=["id"]))
    info = runner_mod.holdout_info(holdout, spec_for(key_columns=["id"]))
    assert info["sha256_basis"] == "keys:id" and info["rows"] == len(holdout) == 32
    assert info["labels"] == {"rows": 32, "positives": int(holdout["y"].sum())} and info["positives"] == info[
        "labels"]["positives"]


def test_regression_arrays_hold_targets_and_labels(tmp_path, no_ray):
    df = frame(label=lambda x: linear_target(x).astype("float64"))
    spec = spec_for("regression")
    with pytest.raises(AssertionError, match="Ray must not start"):
        train(df, tmp_path, spec)
    inputs = tmp_path / "ray" / "run" / runner_mod.INPUTS_DIR
    x, targets = load_arrays(inputs / TRAIN_ARRAYS)
    labels = load_labels(inputs / TRAIN_ARRAYS)
    _, val_targets = load_arrays(inputs / VAL_ARRAYS)
    val_labels = load_labels(inputs / VAL_ARRAYS)
    train_part, val_part, _ = runner_mod.split_for_spec(df, spec)
    np.testing.assert_array_equal(labels, train_part["y"].to_numpy(np.float32))
    np.testing.assert_array_equal(val_labels, val_part["y"].to_numpy(np.float32))
    state = get_task("regression").fit_state(labels)
    np.testing.assert_allclose(targets, (labels - state["mean"]) / state["std"], atol=1e-5)
    assert abs(float(targets.mean())) < 1e-5 and float(targets.std()) == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(val_targets, (val_labels - state["mean"]) / state["std"], atol=1e-5)


def test_binary_split_record_keeps_its_former_keys(tmp_path):
    df = frame()
    spec = spec_for()
    manifest = runner_mod.DatasetManifest(uri="mem", sha256="0" * 64, rows=len(df), columns={})
    _, split, config, _, holdout = runner_mod._prepare_inputs(df, spec, manifest, tmp_path / "run")
    assert split["pos_weight"] == config["task_state"]["pos_weight"] == split["task_state"]["pos_weight"]
    assert split["train_positives"] == split["train_labels"]["positives"] and split["output_dim"] == 1
    assert holdout["positives"] == holdout["labels"]["positives"] and config["python_paths"] == []
    user = spec.with_overrides(model="tests.unit.user_models:tiny_net")
    assert runner_mod.user_python_paths(user) == [str(runner_mod.Path(user_models.__file__).resolve().parents[2])]


# ---------------------------------------------------------------------------------------------- model directory
def _model_dir(tmp_path, spec: TrainingSpec, df: pd.DataFrame, fit) -> runner_mod.Path:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.save(fit.model.state_dict(), ckpt / MODEL_FILE)
    pre = Preprocessor.fit(df, spec.numeric_features, spec.categorical_features)
    model_dir = tmp_path / "model"
    runner_mod._write_model_dir(model_dir, ckpt, pre, spec, df[FEATURES].head(5),
                                runner_mod.task_record(spec, fit.task_state))
    return model_dir


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_model_scorer_rebuilds_the_task_and_model(tmp_path, task):
    options = {"classes": ["low", "mid", "high"]} if task == "multiclass" else {}
    label = {"binary": binary_labels, "multiclass": three_classes, "regression": linear_target}[task]
    spec = spec_for(task, task_options=options, model="tests.unit.user_models:tiny_net", model_kwargs={"hidden": 6},
                    epochs=2)
    df = pd.DataFrame(X, columns=FEATURES)
    pre = Preprocessor.fit(df, FEATURES, [])
    xs = pre.transform(df)
    fit = fit_plain(spec, xs, label(X), xs, label(X))
    model_dir = _model_dir(tmp_path, spec, df, fit)
    record = json.loads((model_dir / runner_mod.TASK_FILE).read_text())
    assert record == {"task": task, "options": spec.task_plugin().config, "state": json.loads(json.dumps(
        fit.task_state))}
    scorer = ModelScorer(model_dir)
    assert FraudScorer is ModelScorer and isinstance(scorer.model, user_models.TinyNet)
    fit.model.eval()
    with torch.no_grad():
        raw = fit.model(torch.from_numpy(xs)).double().numpy()
    expected = spec.task_plugin().scores(raw, fit.task_state)
    scores = scorer.predict_scores(df)
    np.testing.assert_allclose(scores, expected, rtol=1e-12, atol=1e-12)
    if task == "multiclass":
        assert scores.shape == (len(df), 3) and np.allclose(scores.sum(axis=1), 1.0)
        np.testing.assert_array_equal(scorer.decisions(df), scores.argmax(axis=1))
    else:
        assert scores.shape == (len(df),)
    if task == "binary":
        assert set(np.unique(scorer.decisions(df, threshold=0.7))) <= {0, 1}
        np.testing.assert_array_equal(scorer.predict_proba(df), scores)
    if task == "regression":
        assert abs(float(scores.mean()) - 40.0) < 5.0  # on the label's scale
    empty = scorer.predict_scores(df.head(0))
    assert len(empty) == 0


def test_a_model_directory_whose_factory_cannot_be_imported_names_it(tmp_path):
    spec = spec_for(model="tests.unit.user_models:tiny_net", epochs=1)
    df = pd.DataFrame(X, columns=FEATURES)
    fit = fit_plain(spec, X, binary_labels(X), XV, binary_labels(XV))
    model_dir = _model_dir(tmp_path, spec, df, fit)
    saved = json.loads((model_dir / runner_mod.SPEC_FILE).read_text())
    (model_dir / runner_mod.SPEC_FILE).write_text(json.dumps({**saved, "model": "gone_pkg.models:tiny_net"}))
    with pytest.raises(ModelLoadError, match=r"cannot load model directory .*model 'gone_pkg.models:tiny_net': "
                       "cannot import module 'gone_pkg.models'"):
        ModelScorer(model_dir)


def test_a_model_directory_without_task_json_is_binary(tmp_path):
    spec = spec_for(epochs=1)
    df = pd.DataFrame(X, columns=FEATURES)
    fit = fit_plain(spec, X, binary_labels(X), XV, binary_labels(XV))
    model_dir = _model_dir(tmp_path, spec, df, fit)
    before = ModelScorer(model_dir).predict_scores(df)
    (model_dir / runner_mod.TASK_FILE).unlink()  # a directory written before task.json existed
    np.testing.assert_array_equal(ModelScorer(model_dir).predict_scores(df), before)


# ---------------------------------------------------------------------------------------------- lineage, curves
def test_lineage_tags_name_the_task_and_the_model():
    from gd_provider.core.lineage import lineage_tags, task_model_tags
    from gd_provider.core.models import code_version

    spec = spec_for("multiclass", task_options={"classes": ["a", "b"]}, model="tests.unit.user_models:tiny_net",
                    model_kwargs={"hidden": 3})
    training = {"mlflow_run_id": "r1", "spec": spec.to_dict(),
                "task": runner_mod.task_record(spec, {"classes": ["a", "b"], "train_counts": [3, 4]}),
                "model": runner_mod.model_info(spec)}
    tags = lineage_tags(dag_id="d", run_id="run", logical_date=None, data_interval=None,
                        dataset={"uri": "u", "sha256": "s" * 64, "rows": 7}, training=training, gate=None)
    assert tags["gd.task"] == "multiclass"
    assert json.loads(tags["gd.task_options"]) == {"classes": ["a", "b"], "class_weight": None}
    assert tags["gd.model.factory"] == "tests.unit.user_models:tiny_net"
    assert json.loads(tags["gd.model.kwargs"]) == {"hidden": 3}
    cv = json.loads(tags["gd.model.code_version"])
    assert cv == code_version(user_models.tiny_net) and cv["module"] == "tests.unit.user_models"
    assert len(cv["source_sha256"]) == 64 and "gd.task.code_version" not in tags
    user = spec_for("tests.unit.user_models:SignTask")
    user_tags = task_model_tags({"spec": user.to_dict(), "task": runner_mod.task_record(user, {}),
                                 "model": runner_mod.model_info(user)})
    assert user_tags["gd.task"] == "tests.unit.user_models:SignTask" and user_tags["gd.model.factory"] == "mlp"
    assert json.loads(user_tags["gd.task.code_version"])["module"] == "tests.unit.user_models"
    # a manifest without task/model (an older training): from its spec
    old = task_model_tags({"spec": spec_for().to_dict()})
    assert old["gd.task"] == "binary" and old["gd.model.factory"] == "mlp"


@pytest.mark.parametrize(
    ("task", "history", "metric", "bounded"),
    [
        ("binary", [{"val_roc_auc": 0.7}, {"val_roc_auc": 0.8}], "val_roc_auc", True),
        ("multiclass", [{"val_accuracy": 0.4}], "val_accuracy", True),
        ("regression", [{"val_r2": 0.4}, {"val_r2": 0.9}], "val_r2", True),
        ("regression", [{"val_r2": -3.0}, {"val_r2": 0.2}], "val_r2", False),
    ],
)
def test_the_curves_plot_the_tasks_main_metric(task, history, metric, bounded):
    options = {"classes": [0, 1]} if task == "multiclass" else {}
    spec = spec_for(task, task_options=options)
    rows = [{"epoch": i + 1, "train_loss": 1.0, "val_loss": 1.0, **h} for i, h in enumerate(history)]
    result = TrainingResult(status="completed", run_name="r", run_dir="/tmp", history=rows, spec=spec.to_dict())
    assert curve_metric(result) == (metric, bounded)
    from gd_provider.core.training.pyfunc import curves_figure

    fig = curves_figure(result)
    assert any(ax.get_ylabel() == metric for ax in fig.axes)


# ---------------------------------------------------------------------------------------------- Ray Jobs request
def test_a_ray_job_request_carries_the_user_modules_root(tmp_path, monkeypatch):
    """The job's driver puts the request's python_paths on sys.path before it reads the spec, so a factory in
    a directory that is not importable by default (a DAGs folder) resolves there."""
    import sys

    from gd_provider.core.training import entrypoint

    root = tmp_path / "dags_folder"
    (root / "gd_user_models_xyz").mkdir(parents=True)
    (root / "gd_user_models_xyz" / "__init__.py").write_text(
        "from torch import nn\n\ndef factory(input_dim, output_dim):\n    return nn.Linear(input_dim, output_dim)\n")
    monkeypatch.syspath_prepend(str(root))
    spec = spec_for(model="gd_user_models_xyz:factory")
    assert runner_mod.user_python_paths(spec) == [str(root)]
    manifest = {"uri": str(tmp_path / "missing.parquet"), "sha256": "0" * 64, "rows": 10,
                "columns": [*spec.required_columns]}
    # the submitting side could import it; the job's driver cannot, unless the request says where from
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(root)])
    monkeypatch.delitem(sys.modules, "gd_user_models_xyz")
    for paths, needle in (([], "SpecError: training spec field 'model': model 'gd_user_models_xyz:factory'"),
                          ([str(root)], "DatasetError")):
        request = entrypoint.build_request(manifest, spec.to_dict(), storage_path=str(tmp_path / "ray"),
                                           run_name="r", result_path=str(tmp_path / "out.json"), python_paths=paths)
        envelope, code = entrypoint.run_request(request)
        assert code == entrypoint.EXIT_INPUT_ERROR and envelope["error"].startswith(needle), envelope["error"]
    assert str(root) in sys.path
