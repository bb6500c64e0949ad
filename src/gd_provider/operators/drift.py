"""Evidently drift check of this run's data against the champion's training data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from gd_provider.operators._common import run_dir


class DriftCheckOperator(BaseOperator):
    """Compare the dataset of ``dataset`` with the training data of ``<model_name>@<alias>``, found through
    the champion's lineage tags (uri + sha256, verified). Methods and threshold are pinned.

    ``policy``: ``retrain`` (drift is reported and is the reason to retrain), ``warn`` (proceed, warn),
    ``block`` (fail the run when the dataset drifted). Without a champion there is no reference: the task
    says so and returns ``status="no_reference"``.
    """

    template_fields: Sequence[str] = ("dataset", "policy")
    ui_color = "#f0e6c0"

    def __init__(
        self,
        *,
        dataset: Any,
        model_name: str,
        numeric_columns: Sequence[str],
        categorical_columns: Sequence[str] = (),
        policy: str = "warn",
        alias: str = "champion",
        numeric_method: str = "wasserstein",
        categorical_method: str = "jensenshannon",
        threshold: float = 0.1,
        drift_share: float = 0.5,
        sample_size: int = 50_000,
        seed: int = 0,
        mlflow_conn_id: str = "mlflow_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dataset = dataset
        self.model_name = model_name
        self.numeric_columns = list(numeric_columns)
        self.categorical_columns = list(categorical_columns)
        self.policy = policy
        self.alias = alias
        self.numeric_method = numeric_method
        self.categorical_method = categorical_method
        self.threshold = threshold
        self.drift_share = drift_share
        self.sample_size = sample_size
        self.seed = seed
        self.mlflow_conn_id = mlflow_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from gd_provider.core.data import DatasetError, DatasetManifest, read_dataset
        from gd_provider.core.drift import DriftConfigError, apply_drift_policy, detect_drift
        from gd_provider.core.lineage import DATASET_SHA256, DATASET_URI
        from gd_provider.core.registry import get_alias_version
        from gd_provider.hooks.mlflow import MlflowHook

        client = MlflowHook(self.mlflow_conn_id).get_conn()
        champion = get_alias_version(client, self.model_name, self.alias)
        if champion is None:
            self.log.info(
                "%s has no %r version yet: no reference data, drift not checked", self.model_name, self.alias
            )
            return {"status": "no_reference", "policy": self.policy, "champion_version": None}
        tags = client.get_model_version(self.model_name, champion).tags
        if DATASET_URI not in tags:
            raise AirflowFailException(
                f"champion {self.model_name} v{champion} has no {DATASET_URI} lineage tag: no reference data"
            )
        ref_manifest = DatasetManifest(uri=tags[DATASET_URI], sha256=tags[DATASET_SHA256], rows=0, columns={})
        try:
            reference = read_dataset(ref_manifest)
            current = read_dataset(self.dataset)
        except DatasetError as exc:
            raise AirflowFailException(f"drift check cannot read its data: {exc}") from exc
        try:
            report = detect_drift(
                reference,
                current,
                numeric_columns=self.numeric_columns,
                categorical_columns=self.categorical_columns,
                numeric_method=self.numeric_method,
                categorical_method=self.categorical_method,
                threshold=self.threshold,
                drift_share=self.drift_share,
                sample_size=self.sample_size,
                seed=self.seed,
                out_dir=str(run_dir(context, "drift")),
            )
        except DriftConfigError as exc:
            raise AirflowFailException(f"drift check cannot compare the data: {exc}") from exc
        decision = apply_drift_policy(report, self.policy)
        self.log.info("Drift vs champion v%s: %s", champion, decision.message)
        manifest = {
            "status": decision.level,
            "policy": self.policy,
            "champion_version": champion,
            "share_drifted": report.share_drifted,
            "drifted_columns": report.drifted_columns,
            "method": report.method,
            "report_uri": report.html_path,
            "message": decision.message,
        }
        if not decision.proceed:
            raise AirflowFailException(f"drift gate blocked the run: {decision.message}")
        return manifest
