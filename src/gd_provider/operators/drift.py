"""Evidently drift check of this run's data against the champion's training data."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from gd_provider.core.gates.result import GateResult
from gd_provider.links import MlflowRunLink, ReportLink, mlflow_run_url, push_link
from gd_provider.operators._common import load_pyfunc, push_gate, run_key, task_dir, task_key


class DriftCheckOperator(BaseOperator):
    """Compare this run's dataset (``dataset`` manifest) with the training data of ``<model_name>@<alias>``,
    found through the champion's lineage tags (uri + sha256, verified before use). When the alias points at
    a version of this same DAG run (the run was cleared after promoting), the champion it replaced is the
    reference (:func:`gd_provider.core.registry.comparison_champion`).

    * Methods and thresholds are pinned (``numeric_method``/``categorical_method``/``threshold``) and can be
      set per column: ``per_column={"amount": {"method": "psi", "threshold": 0.2}}``.
    * Frames larger than ``sample_size`` rows are sampled with ``seed`` (reported in the manifest).
    * Prediction drift: the champion scores both frames (its input columns); what its task compares
      (:meth:`gd_provider.core.tasks.Task.drift_values`: the score of a binary model, the value of a
      regression, the predicted class of a multiclass model) is compared the same way, with
      ``prediction_method`` (numeric) or ``prediction_categorical_method`` (categorical; default
      ``categorical_method``) at ``prediction_threshold``. The task is ``task`` / ``task_options`` (the
      factory passes the config's training spec), else the one the champion knows of itself, else binary.
    * ``policy``: ``retrain`` (drift is reported and is the reason to retrain), ``warn`` (proceed, warn),
      ``block`` (fail the run when the dataset drifted or the champion's predictions drifted).
    * The HTML and JSON reports go to the run's folder and to an MLflow run (extra links "MLflow run",
      "Report"). Without a champion there is no reference: the task says so and returns
      ``status="no_reference"``.
    * ``skip_reason`` (templated, e.g. from a manual run's Param): skips the check and records why.
    """

    template_fields: Sequence[str] = ("dataset", "policy", "skip_reason", "mlflow_conn_id")
    operator_extra_links = (MlflowRunLink(), ReportLink())
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
        per_column: dict[str, dict[str, Any]] | None = None,
        drift_share: float = 0.5,
        prediction_drift: bool = True,
        prediction_method: str = "wasserstein",
        prediction_threshold: float = 0.1,
        prediction_categorical_method: str | None = None,
        task: str | None = None,
        task_options: dict[str, Any] | None = None,
        sample_size: int = 50_000,
        seed: int = 0,
        baseline: dict[str, Any] | None = None,
        skip_reason: str | None = None,
        mlflow_conn_id: str = "mlflow_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        from gd_provider.core.drift_methods import check_drift_method, check_drift_settings

        # methods are checked when the DAG is parsed (a static table: no Evidently import here)
        check_drift_settings(numeric_method=numeric_method, categorical_method=categorical_method,
                             numeric_columns=list(numeric_columns), categorical_columns=list(categorical_columns),
                             per_column=per_column)
        from gd_provider.operators.registry import task_argument

        plugin = task_argument(task, task_options, self.task_id)
        if prediction_drift:
            check_drift_method(prediction_method, "numeric", "prediction_method")
            if prediction_categorical_method is not None or (plugin is not None and plugin.prediction_kind ==
                                                             "categorical"):
                check_drift_method(prediction_categorical_method or categorical_method, "categorical",
                                   "prediction_categorical_method")
        from gd_provider.core.drift_baseline import DriftBaseline

        DriftBaseline.from_dict(baseline)  # checked when the DAG is parsed
        self.baseline = baseline
        self.task = task
        self.task_options = dict(task_options or {})
        self.prediction_categorical_method = prediction_categorical_method
        self.dataset = dataset
        self.skip_reason = skip_reason
        self.model_name = model_name
        self.numeric_columns = list(numeric_columns)
        self.categorical_columns = list(categorical_columns)
        self.policy = policy
        self.alias = alias
        self.numeric_method = numeric_method
        self.categorical_method = categorical_method
        self.threshold = threshold
        self.per_column = per_column
        self.drift_share = drift_share
        self.prediction_drift = prediction_drift
        self.prediction_method = prediction_method
        self.prediction_threshold = prediction_threshold
        self.sample_size = sample_size
        self.seed = seed
        self.mlflow_conn_id = mlflow_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from gd_provider.core import drift as core
        from gd_provider.core.data import DatasetError, read_dataset
        from gd_provider.core.lineage import LineageError, training_dataset
        from gd_provider.core.registry import RegistryError, comparison_champion, ensure_experiment
        from gd_provider.core.tracking import log_check_run
        from gd_provider.hooks.mlflow import MlflowHook

        if self.skip_reason and str(self.skip_reason).strip():
            # a manual run may skip this gate, never silently: the reason travels to lineage and the log
            self.log.warning("Drift check SKIPPED by request: %s", self.skip_reason)
            push_gate(context, GateResult("drift", True, [f"skipped by request: {str(self.skip_reason).strip()}"],
                                          status="skipped"))
            return {"status": "skipped", "policy": self.policy, "champion_version": None,
                    "skip_reason": str(self.skip_reason).strip(),
                    "message": f"drift check skipped by request: {str(self.skip_reason).strip()}"}
        if self.policy not in core.POLICIES:  # the earliest gate for a bad param: before any work
            raise AirflowFailException(f"drift policy {self.policy!r} is not one of {list(core.POLICIES)}")
        mlflow_config = MlflowHook(self.mlflow_conn_id).get_config()
        client = mlflow_config.client()
        try:
            # the champion, or - when this run already promoted its own model (a cleared run) - the one it
            # replaced: this run's own training data is no reference for this run's data
            champion = comparison_champion(client, self.model_name, self.alias, run_key(context))
        except RegistryError as exc:
            raise AirflowFailException(f"drift check cannot find its reference: {exc}") from exc
        if champion is None:
            self.log.info("%s has no %r version yet: no reference data, drift not checked", self.model_name, self.alias)
            push_gate(context, GateResult("drift", True, ["no champion yet: nothing to compare"],
                                          status="not_applicable"))
            return {"status": "no_reference", "policy": self.policy, "champion_version": None,
                    "message": "no champion yet: nothing to compare"}
        try:
            ref_manifest = training_dataset(client, self.model_name, champion)
        except LineageError as exc:
            raise AirflowFailException(f"{exc}: no reference data") from exc
        try:
            reference = read_dataset(ref_manifest)
            current = read_dataset(self.dataset)
        except DatasetError as exc:
            raise AirflowFailException(f"drift check cannot read its data: {exc}") from exc
        out_dir = task_dir(context, self.task_id)
        per_column = self.per_column or {}
        try:
            report = core.detect_drift(
                reference,
                current,
                numeric_columns=self.numeric_columns,
                categorical_columns=self.categorical_columns,
                numeric_method=self.numeric_method,
                categorical_method=self.categorical_method,
                threshold=self.threshold,
                per_column=per_column,
                drift_share=self.drift_share,
                sample_size=self.sample_size,
                seed=self.seed,
                out_dir=str(out_dir),
            )
            prediction = None
            if self.prediction_drift:
                prediction = self._prediction_drift(core, reference, current, champion)
        except core.DriftConfigError as exc:
            raise AirflowFailException(f"drift check cannot compare the data: {exc}") from exc
        experiment_id = ensure_experiment(client, self.model_name, mlflow_config.artifact_root)
        baseline = self._judge_on_baseline(client, experiment_id, run_key(context), report, prediction)
        if baseline is not None:
            report = baseline.pop("report")
        decision = core.apply_drift_policy(report, self.policy)
        proceed, message = decision.proceed, decision.message
        if prediction is not None:
            if prediction["kind"] == "categorical":
                moved = f"predicted class shares {prediction['reference_shares']} → {prediction['current_shares']}"
            else:
                moved = f"mean score {prediction['reference_mean']:.4f} → {prediction['current_mean']:.4f}"
            message += (
                f" Champion v{champion} prediction drift ({prediction['task']} task, {prediction['method']}): score "
                f"{prediction['score']:.4f} vs threshold {prediction['threshold']} → "
                f"{'DRIFTED' if prediction['drifted'] else 'stable'} ({moved})."
            )
            if prediction["drifted"] and self.policy == "block":
                proceed = False

        metrics = {"share_drifted": report.share_drifted, "dataset_drift": float(report.dataset_drift)}
        metrics.update({f"drift_score.{c}": v["score"] for c, v in report.columns.items() if v["score"] is not None})
        if prediction is not None:
            metrics["prediction_drift_score"] = prediction["score"]
        mlflow_run_id = log_check_run(
            client, experiment_id, run_key=run_key(context), kind="drift_check", task=task_key(context, self.task_id),
            metrics=metrics,
            tags={"gd.champion_version": champion, "gd.drift.policy": self.policy, "gd.drift.method": report.method,
                  "gd.drift.decision": decision.level if proceed else "block"},
            artifacts=[p for p in (report.html_path, report.json_path) if p],
        )
        run_url = mlflow_run_url(mlflow_config.ui_url, experiment_id, mlflow_run_id)
        push_link(context, MlflowRunLink, run_url)
        # the HTML report as the MLflow UI serves it (logged with the run): an http link the Airflow UI shows
        report_url = f"{run_url}/artifactPath/{Path(report.html_path).name}" if run_url and report.html_path else None
        push_link(context, ReportLink, report_url)
        self.log.info("Drift vs champion v%s: %s", champion, message)
        manifest = {
            "status": decision.level if proceed else "block",
            "policy": self.policy,
            "champion_version": champion,
            "share_drifted": report.share_drifted,
            "dataset_drift": report.dataset_drift,
            "drifted_columns": report.drifted_columns,
            "method": report.method,
            "sampled": report.sampled,
            "reference_rows": report.reference_rows,
            "current_rows": report.current_rows,
            "sample_rows": [report.reference_sample_rows, report.current_sample_rows],
            "seed": self.seed,
            "prediction_drift": prediction,
            "baseline": baseline,
            "report_uri": report.html_path,
            "report_url": report_url,
            "mlflow_run_id": mlflow_run_id,
            "message": message,
        }
        numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        links = {"mlflow_run": run_url, "report": report_url}
        push_gate(context, GateResult("drift", proceed, [f"{message} (policy {self.policy}): "
                                                         f"{'pass' if proceed else 'FAIL'}"], numbers,
                                      {k: v for k, v in links.items() if v}))
        if not proceed:
            raise AirflowFailException(f"drift gate blocked the run: {message}")
        return manifest

    def _judge_on_baseline(self, client: Any, experiment_id: str, key: str, report: Any,
                           prediction: dict[str, Any] | None) -> dict[str, Any] | None:
        """Baseline mode: each column's and the prediction's score against its scores on this model's previous
        drift checks (their MLflow runs); the report's verdicts replaced, ``prediction["drifted"]`` too."""
        from gd_provider.core.drift_baseline import DriftBaseline, judge_against_baseline, rebase_report
        from gd_provider.core.tracking import drift_score_history

        settings = DriftBaseline.from_dict(self.baseline)
        if settings is None:
            return None
        history = drift_score_history(client, experiment_id, exclude_run_key=key, nights=settings.nights)
        scores = {c: v["score"] for c, v in report.columns.items()}
        fixed = {c: bool(v["drifted"]) for c, v in report.columns.items()}
        if prediction is not None:
            scores["prediction"], fixed["prediction"] = prediction["score"], bool(prediction["drifted"])
        verdicts = judge_against_baseline(scores, history, settings, fixed)
        if prediction is not None:
            prediction["drifted"] = verdicts["prediction"]["drifted"]
            prediction["baseline"] = verdicts.pop("prediction")
        rebased = rebase_report(report, verdicts)
        learned = sorted(c for c, v in verdicts.items() if v["basis"] == "baseline")
        self.log.info("Drift judged against %d past night(s): %d column(s) on their own baseline, %d on the fixed "
                      "threshold (fewer than %d past scores)", max((v["nights"] for v in verdicts.values()), default=0),
                      len(learned), len(verdicts) - len(learned), settings.min_nights)
        return {"report": rebased, "settings": self.baseline, "columns": verdicts,
                "unusual": [c for c in rebased.drifted_columns], "fixed_threshold_columns":
                    sorted(c for c, v in verdicts.items() if v["basis"] == "fixed_threshold")}

    def _prediction_drift(self, core: Any, reference: Any, current: Any, champion: str) -> dict[str, Any]:
        from gd_provider.core.tasks import get_task
        from gd_provider.operators.registry import model_scores, task_argument, task_of_model

        model = load_pyfunc(f"models:/{self.model_name}/{champion}")
        task = task_argument(self.task, self.task_options, self.task_id) or task_of_model(model) or get_task("binary")
        n = self.sample_size
        ref = reference.sample(n=n, random_state=self.seed) if len(reference) > n else reference
        cur = current.sample(n=n, random_state=self.seed) if len(current) > n else current
        categorical = task.prediction_kind == "categorical"
        method = (self.prediction_categorical_method or self.categorical_method) if categorical else self.prediction_method
        out = core.prediction_drift(
            task.drift_values(model_scores(model, ref)), task.drift_values(model_scores(model, cur)), method=method,
            threshold=self.prediction_threshold, seed=self.seed, sample_size=n,
            kind="categorical" if categorical else "numeric",
        )
        return {**out, "task": task.to_dict()["task"]}
