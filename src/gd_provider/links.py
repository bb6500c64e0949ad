"""Extra links on our tasks: the MLflow run, the model version, a report, the Ray job.

Airflow 3 keeps an operator link's URL in XCom under ``link.xcom_key``; the operator pushes it with
:func:`push_link` once it knows the URL, and the UI shows the button.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperatorLink


class _XComLink(BaseOperatorLink):
    name = "link"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        return XCom.get_value(ti_key=ti_key, key=self.xcom_key) or ""


class MlflowRunLink(_XComLink):
    name = "MLflow run"


class MlflowModelVersionLink(_XComLink):
    name = "MLflow model version"


class ReportLink(_XComLink):
    name = "Report"


class RayJobLink(_XComLink):
    name = "Ray job"


class ValidationReportLink(_XComLink):
    """The data validation report (HTML data doc): in the validation MLflow run's artifacts when MLflow is
    reachable, else the local file in the DAG run's folder."""

    name = "Validation report"


def push_link(context: Any, link: type[BaseOperatorLink], url: str | None) -> None:
    ti = context.get("ti") if hasattr(context, "get") else context["ti"]
    if url and ti is not None:
        ti.xcom_push(key=link().xcom_key, value=url)


def mlflow_run_url(ui_url: str | None, experiment_id: str, run_id: str) -> str | None:
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}" if ui_url else None


def mlflow_model_version_url(ui_url: str | None, name: str, version: str) -> str | None:
    return f"{ui_url.rstrip('/')}/#/models/{name}/versions/{version}" if ui_url else None


def ray_job_url(dashboard_url: str | None, submission_id: str) -> str | None:
    return f"{dashboard_url.rstrip('/')}/#/jobs/{submission_id}" if dashboard_url else None
