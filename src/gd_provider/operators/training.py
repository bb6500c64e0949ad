"""Ray Train training of the challenger, tracked in MLflow."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from gd_provider.operators._common import run_dir, run_key, safe_name


class RayTrainOperator(BaseOperator):
    """Train ``spec`` (a TrainingSpec as dict) on the dataset manifest with Ray Train's TorchTrainer,
    then log params, per-epoch and per-step telemetry, curves and the model to MLflow.

    ``spec_overrides`` (templated; e.g. ``{{ params.training_overrides }}`` with native rendering) lets a
    manual run change the learning rate or epochs; the spec is validated before Ray starts.
    Returns the training manifest ``{mlflow_run_id, model_uri, metrics, health, spec, ...}``; ``health``
    is what ``TrainingHealthGate`` judges.

    When the gradient-descent guards stop the run (``status="diverged"``), the MLflow run is still logged
    with the telemetry up to the stop and tagged ``gd.health.status=diverged``, but no model is logged, and
    the task fails with ``AirflowFailException`` (no retry) naming the reason - so nothing gets registered.
    """

    template_fields: Sequence[str] = ("dataset", "spec_overrides")
    ui_color = "#d9d2f0"

    def __init__(
        self,
        *,
        dataset: Any,
        spec: dict[str, Any],
        model_name: str,
        spec_overrides: dict[str, Any] | None = None,
        experiment_name: str | None = None,
        ray_conn_id: str = "ray_default",
        mlflow_conn_id: str = "mlflow_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dataset = dataset
        self.spec = spec
        self.spec_overrides = spec_overrides
        self.model_name = model_name
        self.experiment_name = experiment_name
        self.ray_conn_id = ray_conn_id
        self.mlflow_conn_id = mlflow_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from gd_provider.core.registry import ensure_experiment
        from gd_provider.core.training.pyfunc import log_training_run
        from gd_provider.core.training.runner import TrainingInputError, run_training
        from gd_provider.core.training.spec import SpecError, TrainingSpec
        from gd_provider.hooks.mlflow import MlflowHook
        from gd_provider.hooks.ray import RayHook

        try:
            spec = TrainingSpec.from_dict(self.spec)
            if self.spec_overrides:
                if not isinstance(self.spec_overrides, dict):
                    raise SpecError(
                        "spec_overrides", f"must be a mapping, got {self.spec_overrides!r}"
                    )
                spec = spec.with_overrides(self.spec_overrides)
            spec.validate()
        except SpecError as exc:
            raise AirflowFailException(f"invalid training spec: {exc}") from exc

        address = RayHook(self.ray_conn_id).address()
        mlflow_config = MlflowHook(self.mlflow_conn_id).get_config()
        client = mlflow_config.client()
        experiment_id = ensure_experiment(client, self.experiment_name or self.model_name, mlflow_config.artifact_root)

        key = run_key(context)
        try:
            result = run_training(
                self.dataset,
                spec,
                storage_path=str(run_dir(context, "ray")),
                run_name=safe_name(f"train-{key}"),
                ray_address=address,
            )
        except (SpecError, TrainingInputError) as exc:
            # Checked before Ray starts (columns, labels, device/precision): retrying cannot help.
            raise AirflowFailException(f"cannot train: {exc}") from exc
        if result.sensitivity:
            self.log.info("Learning-rate sensitivity check %s: %s", result.sensitivity["status"], result.sensitivity["reason"])
        if result.status not in ("completed", "diverged"):
            raise AirflowFailException(f"training did not complete ({result.status}): {result.error}")
        dag_run = context["dag_run"]
        logged = log_training_run(
            result,
            spec,
            self.dataset,
            experiment_id=experiment_id,
            run_name=f"{dag_run.dag_id}:{dag_run.run_id}",
            tags={"gd.dag_id": dag_run.dag_id, "gd.airflow_run_id": dag_run.run_id, "gd.run_key": key},
        )
        if result.status == "diverged":
            guard = result.guard
            raise AirflowFailException(
                f"training diverged at step {guard.get('step')} (epoch {guard.get('epoch')}, batch "
                f"{guard.get('batch')}, rank {guard.get('rank')}): {guard.get('reason')}. Nothing was "
                f"registered; telemetry is in MLflow run {logged['mlflow_run_id']} (gd.health.status=diverged)"
            )
        self.log.info("Training finished: %s, MLflow run %s", logged["metrics"], logged["mlflow_run_id"])
        self.log.info("Training health: %s", logged["health"])
        return {**logged, "spec": spec.to_dict(), "holdout": result.holdout}
