"""Scoring a trained model directory, and logging a training run (params, curves, model) to MLflow.

``ModelScorer`` needs only torch/pandas: it rebuilds the spec's task (``task.json``: name or import path,
options, fitted state) and model (``core.models.build(spec.model, input_dim, task.output_width, kwargs)``)
and loads the weights. ``predict_scores(df)`` is the task's ``scores`` of the raw outputs: a 1-D
probability (binary), an ``(N, K)`` probability matrix (multiclass), a 1-D value on the label's scale
(regression); ``decisions(df, threshold)`` what a consumer acts on. ``GdTorchPyfunc`` wraps it as an MLflow
pyfunc so ``mlflow.pyfunc.load_model(uri).predict(df)`` returns those scores. Loading the pyfunc requires
``gd_provider`` to be importable (the class is pickled by reference), and so must a user's model factory
and task class be (named by import path in the spec).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch

from gd_provider.core import models
from gd_provider.core.tasks import Task, TaskError, get_task
from gd_provider.core.training.loop import MODEL_FILE
from gd_provider.core.training.preprocess import Preprocessor
from gd_provider.core.training.runner import (
    INPUT_EXAMPLE_FILE,
    PREPROCESSOR_FILE,
    SPEC_FILE,
    TASK_FILE,
    TrainingResult,
    _json_safe,
)
from gd_provider.core.training.spec import SpecError, TrainingSpec

_CHUNK = 65536
MAX_STEP_POINTS = 20000  # per-step metric points logged per key; longer runs are strided (last step kept)
_PIP_PACKAGES = ("torch", "numpy", "pandas", "pyarrow", "mlflow")


class ModelLoadError(ValueError):
    """A model directory cannot be loaded (a user's factory or task cannot be imported, a bad file)."""


class ModelScorer:
    """A trained model directory (``model.pt`` + ``preprocessor.json`` + ``spec.json`` + ``task.json``) ready
    to score. A directory written before ``task.json`` existed is a binary model (its task's state is not
    needed to score it)."""

    def __init__(self, model_dir: str | Path):
        path = Path(model_dir)
        for name in (MODEL_FILE, PREPROCESSOR_FILE, SPEC_FILE):
            if not (path / name).is_file():
                raise FileNotFoundError(f"model directory {path} lacks {name}")
        self.model_dir = path
        data = json.loads((path / SPEC_FILE).read_text())
        try:
            self.spec = TrainingSpec.from_dict(data)
        except SpecError as exc:  # e.g. the user's factory module cannot be imported where the model is loaded
            raise ModelLoadError(f"cannot load model directory {path}: {exc}") from exc
        self.preprocessor = Preprocessor.from_dict(json.loads((path / PREPROCESSOR_FILE).read_text()))
        task_file = path / TASK_FILE
        record = json.loads(task_file.read_text()) if task_file.is_file() else {
            **self.spec.task_plugin().to_dict(), "state": {}}
        try:
            self.task: Task = get_task(record["task"], record.get("options") or {})
        except TaskError as exc:
            raise ModelLoadError(f"cannot load model directory {path}: {exc}") from exc
        self.task_state: dict[str, Any] = dict(record.get("state") or {})
        try:
            self.model = models.build(self.spec.model, self.preprocessor.output_dim, self.task.output_width,
                                      self.spec.model_kwargs_for_factory())
        except ValueError as exc:
            raise ModelLoadError(f"cannot load model directory {path}: {exc}") from exc
        self.model.load_state_dict(torch.load(path / MODEL_FILE, map_location="cpu", weights_only=True))
        self.model.eval()

    @property
    def input_columns(self) -> list[str]:
        return self.preprocessor.input_columns

    def input_example(self) -> pd.DataFrame | None:
        path = self.model_dir / INPUT_EXAMPLE_FILE
        return pd.read_parquet(path) if path.is_file() else None

    @torch.no_grad()
    def predict_outputs(self, df: pd.DataFrame) -> np.ndarray:
        """The model's raw outputs, float64: ``(N,)`` for width 1, else ``(N, width)``."""
        width = self.task.output_width
        x = torch.from_numpy(self.preprocessor.transform(df))
        if len(x) == 0:
            return np.zeros((0,) if width == 1 else (0, width), dtype=np.float64)
        out = torch.cat([self.model(x[i : i + _CHUNK]) for i in range(0, len(x), _CHUNK)]).double().numpy()
        return out.reshape(len(out)) if width == 1 else out.reshape(len(out), -1)

    def predict_scores(self, df: pd.DataFrame) -> np.ndarray:
        """The task's scores per row (what the MLflow model's ``predict`` returns)."""
        outputs = self.predict_outputs(df)
        if len(outputs) == 0:  # no rows: the outputs' empty shape ((0,) or (0, K)), as scores of nothing
            return outputs
        return self.task.scores(outputs, self.task_state)

    @property
    def serving_rule(self) -> Any:
        """The model's operating point as its task decides with it (binary: the threshold; multiclass: the
        per-class thresholds; regression: the tolerance), else None (the task's default)."""
        return self.task.serving_rule(self.task_state)

    @property
    def serving_threshold(self) -> float | None:
        """The threshold of the model's operating point (binary models trained with one), else None."""
        rule = self.serving_rule
        return float(rule) if isinstance(rule, int | float) else None

    def decisions(self, df: pd.DataFrame, threshold: Any = None) -> np.ndarray:
        """What a consumer acts on: 0/1 at ``threshold`` (binary; default: the model's operating point, else
        0.5), a class index (at the model's per-class thresholds, else argmax), a value."""
        return self.task.decisions(self.predict_scores(df), self.serving_rule if threshold is None else threshold)

    # the binary model's former names
    predict_logits = predict_outputs
    predict_proba = predict_scores


FraudScorer = ModelScorer  # the former name (a binary model directory scores as before)


class GdTorchPyfunc(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined]  # mlflow exports it lazily
    """MLflow pyfunc around ``ModelScorer``; artifacts: ``{"model_dir": <trained model directory>}``."""

    def load_context(self, context: Any) -> None:
        self._scorer = ModelScorer(context.artifacts["model_dir"])

    # ``pd.DataFrame`` is a hint MLflow 3 accepts without deriving a schema from it (the logged signature
    # rules); no hint at all, or ``Any``, makes MLflow warn at import/log time.
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return self._scorer.predict_scores(frame)


# ---------------------------------------------------------------------------------------------- logging
def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _pip_requirements() -> list[str]:
    reqs = []
    for pkg in _PIP_PACKAGES:
        version = _version(pkg)
        if version == "unknown":
            continue
        reqs.append(f"{pkg}=={version.split('+')[0]}")  # "2.13.0+cpu" is not a PyPI version
    return reqs


def _param_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return "None" if value is None else str(value)


def spec_params(spec: TrainingSpec) -> dict[str, str]:
    """MLflow params ``spec.<field>``; nested configs are flattened (``spec.guards.max_grad_norm``)."""
    out = {}
    for key, value in spec.to_dict().items():
        if isinstance(value, dict):
            out.update({f"spec.{key}.{k}": _param_value(v) for k, v in value.items()})
        else:
            out[f"spec.{key}"] = _param_value(value)
    return out


def curve_metric(result: TrainingResult) -> tuple[str | None, bool]:
    """The per-epoch metric the curves plot next to the losses, and whether its axis is 0..1: the task's
    ``default_validation_metric`` (binary ``val_roc_auc``, multiclass ``val_accuracy``, regression
    ``val_r2``), else its first non-loss validation metric. The axis is 0..1 for a higher-is-better
    metric whose values all lie in [0, 1] (AUC, accuracy, F1; an R² below 0 autoscales)."""
    try:
        task = TrainingSpec.from_dict(result.spec).task_plugin() if result.spec else get_task("binary")
    except (SpecError, TaskError):
        return None, False
    directions = dict(task.validation_metrics)
    metric: str | None = task.default_validation_metric
    if metric == "val_loss" or metric not in directions:
        metric = next((m for m in directions if m != "val_loss"), None)
    if metric is None:
        return None, False
    values = [h.get(metric) for h in result.history]
    finite = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
    bounded = bool(directions.get(metric)) and bool(finite) and all(0.0 <= v <= 1.0 for v in finite)
    return metric, bounded


def curves_figure(result: TrainingResult) -> Any:
    """Matplotlib figure: per-step loss and gradient norm, and per-epoch train/val loss + the task's main
    validation metric (``curve_metric``)."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, nothing global, thread-safe

    fig = Figure(figsize=(12, 3.6), dpi=100)
    ax_loss, ax_norm, ax_epoch = fig.subplots(1, 3)
    steps = result.steps
    ax_loss.plot(steps.get("step", []), steps.get("loss", []), lw=0.8)
    ax_loss.set(title="train loss per step", xlabel="step")
    ax_norm.plot(steps.get("step", []), steps.get("grad_norm", []), lw=0.8, color="tab:orange")
    clip = result.spec.get("grad_clip_norm")
    if clip:
        ax_norm.axhline(clip, ls="--", lw=0.8, color="grey", label=f"clip {clip:g}")
        ax_norm.legend(loc="upper right")
    ax_norm.set(title="gradient norm (pre-clip)", xlabel="step")
    trip = result.guard or {}
    if trip.get("step") is not None:
        for ax in (ax_loss, ax_norm):
            ax.axvline(trip["step"], color="red", lw=1.0, ls=":")
        ax_loss.set_title(f"train loss per step - stopped: {trip.get('kind', 'guard')} @ step {trip['step']}")
    if result.steps.get("grad_norm") and any(v is not None and v > 0 for v in result.steps["grad_norm"]):
        with contextlib.suppress(ValueError):
            ax_norm.set_yscale("log")
    epochs = [h["epoch"] for h in result.history]
    ax_epoch.plot(epochs, [h["train_loss"] for h in result.history], marker="o", label="train loss")
    ax_epoch.plot(epochs, [h["val_loss"] for h in result.history], marker="o", label="val loss")
    metric, bounded = curve_metric(result)
    if metric is not None:
        ax_metric = ax_epoch.twinx()
        values = [h.get(metric) for h in result.history]
        ax_metric.plot(epochs, [math.nan if v is None else v for v in values], marker="s", color="tab:green",
                       label=metric)
        ax_metric.set_ylabel(metric)
        if bounded:
            ax_metric.set_ylim(0.0, 1.0)
        ax_metric.legend(loc="upper right", fontsize=8)
    ax_epoch.set(title="per epoch", xlabel="epoch")
    ax_epoch.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    return fig


def _epoch_metrics(result: TrainingResult, now_ms: int) -> list[Any]:
    from mlflow.entities import Metric

    out = []
    for entry in result.history:
        epoch = int(entry["epoch"])
        for key, value in entry.items():
            if key == "epoch" or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            out.append(Metric(key=key, value=float(value), timestamp=now_ms, step=epoch))
    return out


def _step_metrics(result: TrainingResult, now_ms: int, max_points: int = MAX_STEP_POINTS) -> list[Any]:
    from mlflow.entities import Metric

    out = []
    steps = result.steps
    n = len(steps.get("step", []))
    stride = max(1, math.ceil(n / max_points)) if max_points else 1
    keep = set(range(0, n, stride)) | ({n - 1} if n else set())
    lr_name, lr_factor = lr_metric(steps.get("lr", []))
    for key, name, factor in (
        ("loss", "step_loss", 1.0),
        ("grad_norm", "step_grad_norm", 1.0),
        ("lr", lr_name, lr_factor),
        ("clipped", "step_clipped", 1.0),
    ):
        values = steps.get(key, [])
        for i, (step, value) in enumerate(zip(steps.get("step", []), values, strict=False)):
            if i not in keep or value is None or not math.isfinite(value):
                continue  # non-finite steps are counted in gd.health.nonfinite_steps
            out.append(Metric(key=name, value=float(value) * factor, timestamp=now_ms, step=int(step)))
    return out


def lr_metric(lrs: list[float]) -> tuple[str, float]:
    """``(name, factor)`` of the per-step learning-rate metric: the lr times a power of ten that puts the
    run's largest lr in [1, 10), named for it (``step_lr_x1e3``: lr 0.001 plots as 1.0). A learning rate of
    1e-3 logged as is reads as a flat line at 0 in MLflow's charts (a constant series gets a unit-wide axis
    around 0); the per-epoch ``lr`` metric keeps the value itself. ``step_lr`` unscaled when the lr is >= 1."""
    finite = [abs(float(v)) for v in lrs if v is not None and math.isfinite(v) and v != 0]
    if not finite:
        return "step_lr", 1.0
    exponent = -math.floor(math.log10(max(finite)))
    if exponent <= 0:
        return "step_lr", 1.0
    return f"step_lr_x1e{exponent}", float(10**exponent)


def log_training_run(
    result: TrainingResult,
    spec: TrainingSpec,
    dataset_manifest: dict[str, Any],
    *,
    experiment_id: str,
    run_name: str,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Log a training run to MLflow (current tracking URI) and return its ids and URIs.

    A ``completed`` run is logged with its model. A ``diverged`` run (the guards stopped it) is logged for
    the post-mortem - params, the telemetry up to the stop, curves, guard details, tags
    ``gd.health.status=diverged`` and ``gd.health.guard_*`` - but WITHOUT a model (``model_uri`` is None).

    The run is tagged with what was predicted and by which code (``gd.task``, ``gd.task_options``,
    ``gd.model.factory``, ``gd.model.kwargs``, ``gd.model.code_version``; see
    :func:`gd_provider.core.lineage.task_model_tags`) and gets params ``task``, ``task.options``,
    ``task.state``, ``model.factory``, ``model.kwargs``. The returned dict (the training manifest's core)
    carries ``task`` (the model directory's ``task.json``) and ``model`` (``{"factory", "kwargs",
    "code_version"}``) for the lineage of the registered version.
    """
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    from gd_provider.core.tracking import log_dataset_input

    if result.status not in ("completed", "diverged"):
        raise ValueError(
            f"only completed or diverged training runs can be logged (status={result.status!r}, "
            f"error={result.error!r})"
        )
    with_model = result.status == "completed"
    if with_model:
        if not result.model_dir:
            raise ValueError("a completed training run without a model directory cannot be logged")
        scorer = ModelScorer(result.model_dir)
        example = scorer.input_example()
        if example is None:
            raise FileNotFoundError(f"model directory {result.model_dir} lacks {INPUT_EXAMPLE_FILE}")
        # The signature keeps the training data's dtypes: MLflow refuses int64 -> double (unless all 0/1), so
        # declaring numeric features as double would reject the very frames the model was trained on.
        example = example[list(spec.features)]
        scores = scorer.predict_scores(example)

    from gd_provider.core.lineage import task_model_tags

    client = MlflowClient()
    health = {"status": result.status, **result.health}
    record = {"spec": result.spec or spec.to_dict(), "task": result.task, "model": result.model}
    all_tags = {
        **task_model_tags(record),
        "gd.run_kind": "training",
        "gd.train.run_name": result.run_name,
        "gd.dataset.sha256": str(dataset_manifest.get("sha256", "")),
        "gd.holdout.sha256": str(result.holdout.get("sha256", "")),
        **{f"gd.health.{k}": _param_value(v)[:5000] for k, v in health.items()},
        **(tags or {}),
    }
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=all_tags) as run:
        run_id = run.info.run_id
        params = spec_params(spec)
        params.update(
            {
                "seed": str(spec.seed),
                "torch_version": _version("torch"),
                "ray_version": _version("ray"),
                "mlflow_version": _version("mlflow"),
                "dataset.sha256": str(dataset_manifest.get("sha256")),
                "dataset.uri": str(dataset_manifest.get("uri")),
                "dataset.rows": str(dataset_manifest.get("rows")),
                "split.train_rows": str(result.split.get("train_rows")),
                "split.val_rows": str(result.split.get("val_rows")),
                "split.holdout_rows": str(result.holdout.get("rows")),
                "split.pos_weight": _param_value(result.split.get("pos_weight")),
                "model.input_dim": str(result.split.get("input_dim")),
                "model.output_dim": str(result.split.get("output_dim")),
                "model.factory": str(result.model.get("factory") or spec.model),
                "model.kwargs": json.dumps(_json_safe(spec.model_kwargs_for_factory()), sort_keys=True),
                "task": str(result.task.get("task") or spec.task),
                "task.options": json.dumps(result.task.get("options", spec.task_options), sort_keys=True, default=str),
                "task.state": json.dumps(result.task.get("state", {}), sort_keys=True, default=str),
                "train.world_size": str(spec.num_workers),
            }
        )
        client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in params.items()], synchronous=True)
        log_dataset_input(client, run_id, dataset_manifest, context="training")  # metadata only, no upload

        now_ms = int(time.time() * 1000)
        metrics = _epoch_metrics(result, now_ms) + _step_metrics(result, now_ms)
        final = {k: v for k, v in result.metrics.items() if isinstance(v, int | float) and math.isfinite(v)}
        metrics += [
            Metric(key=f"final_{k}", value=float(v), timestamp=now_ms, step=0) for k, v in final.items()
        ]
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[i : i + 1000], synchronous=True)
        if result.timings:
            client.log_batch(
                run_id,
                tags=[RunTag(f"gd.timing.{k}", f"{v:.3f}") for k, v in result.timings.items()],
                synchronous=True,
            )

        mlflow.log_figure(curves_figure(result), "plots/training_curves.png")
        safe = result.to_dict()
        mlflow.log_dict(safe["history"], "training/history.json")
        mlflow.log_dict(safe["steps"], "training/steps.json")
        mlflow.log_dict({"holdout": result.holdout, "split": result.split}, "training/split.json")
        if result.task:
            mlflow.log_dict(safe["task"], "training/task.json")
        mlflow.log_dict(
            {"status": result.status, "error": result.error, "guard": safe["guard"], "run_state": safe["run_state"]},
            "training/guard.json",
        )
        if result.sensitivity:
            mlflow.log_dict(safe["sensitivity"], "training/sensitivity.json")

        info = None
        if with_model:
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=GdTorchPyfunc(),
                artifacts={"model_dir": str(result.model_dir)},
                signature=infer_signature(example, scores),
                input_example=example,
                pip_requirements=_pip_requirements(),
            )
    return {
        "mlflow_run_id": run_id,
        "status": result.status,
        "model_uri": info.model_uri if info is not None else None,
        "run_model_uri": f"runs:/{run_id}/model" if info is not None else None,
        "model_id": getattr(info, "model_id", None),
        "guard": _json_safe(result.guard),
        "sensitivity": _json_safe(result.sensitivity),
        "metrics": {
            k: (v if not isinstance(v, float) or math.isfinite(v) else None)
            for k, v in result.metrics.items()
        },
        "health": _json_safe(health),
        "task": _json_safe(result.task),
        "model": _json_safe(result.model),
    }

