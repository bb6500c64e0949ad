"""Provider metadata read by Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from gd_provider import __version__


def _field(label: str, description: str, *, kind: str = "string", **schema: Any) -> dict[str, Any]:
    return {"label": label, "description": description, "schema": {"type": [kind, "null"], **schema}}


# Airflow 3.3 builds the connection forms from these (not from the hooks): ``conn-fields`` are stored in the
# connection's extra under their own names, which are the extra keys the hooks read.
CONNECTION_TYPES: list[dict[str, Any]] = [
    {
        "hook-class-name": "gd_provider.hooks.feast.FeastHook",
        "connection-type": "feast",
        "hook-name": "Feast feature store",
        "ui-field-behaviour": {
            "hidden-fields": ["host", "schema", "login", "port", "extra"],
            "relabeling": {"password": "Online store password"},
            "placeholders": {"password": "substituted for ${REDIS_PASSWORD} in feature_store.yaml",
                             "repo_path": "/opt/feature_repo", "password_env": "REDIS_PASSWORD"},
        },
        "conn-fields": {
            "repo_path": _field("Feature repo path", "The folder holding feature_store.yaml (default: the project "
                                "home's feature_repo)", placeholder="/opt/feature_repo"),
            "password_env": _field("Password variable", "The environment variable feature_store.yaml reads the "
                                   "online store password from (default REDIS_PASSWORD)", placeholder="REDIS_PASSWORD",
                                   pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"),
        },
    },
    {
        "hook-class-name": "gd_provider.hooks.mlflow.MlflowHook",
        "connection-type": "mlflow",
        "hook-name": "MLflow tracking and registry",
        "ui-field-behaviour": {
            "hidden-fields": ["login", "extra"],
            "relabeling": {"host": "Tracking server host", "password": "Token (MLFLOW_TRACKING_TOKEN)"},
            "placeholders": {"host": "mlflow (empty: the embedded SQLite store)", "schema": "http", "port": "5000",
                             "tracking_uri": "http://mlflow:5000", "artifact_root": "s3://mlflow-artifacts",
                             "ui_url": "https://mlflow.example.com"},
        },
        "conn-fields": {
            "tracking_uri": _field("Tracking URI", "The full tracking URI instead of host/port (postgresql://..., "
                                   "sqlite:///...)", placeholder="http://mlflow:5000"),
            "registry_uri": _field("Registry URI", "When the model registry lives elsewhere than tracking"),
            "artifact_root": _field("Artifact root", "Where new experiments store artifacts (a path or s3://...)",
                                    placeholder="s3://mlflow-artifacts"),
            "ui_url": _field("UI URL", "The MLflow UI as users reach it, for the task links (default: the server)",
                             placeholder="https://mlflow.example.com", format="url"),
        },
    },
    {
        "hook-class-name": "gd_provider.hooks.ray.RayHook",
        "connection-type": "ray",
        "hook-name": "Ray cluster (Jobs API)",
        "ui-field-behaviour": {
            "hidden-fields": ["login", "extra"],
            "relabeling": {"host": "Jobs API address", "password": "Ray auth token"},
            "placeholders": {"host": "local | http://ray-head:8265", "schema": "http", "port": "8265",
                             "address": "http://ray-head:8265", "python": "python",
                             "runtime_env": '{"pip": ["gd-provider"]}'},
        },
        "conn-fields": {
            "address": _field("Jobs API URL", "http(s)://head:8265, instead of host/port/schema",
                              placeholder="http://ray-head:8265"),
            "python": _field("Python on the cluster", "The interpreter that runs the training entrypoint",
                             placeholder="python"),
            "runtime_env": _field("Runtime environment", "Ray runtime_env of the training job (JSON)",
                                  kind="object"),
            "verify": _field("Verify TLS", "Check the Jobs API's certificate", kind="boolean", default=True),
            "ui_url": _field("Dashboard URL", "The Ray dashboard as users reach it, for the task links",
                             format="url"),
        },
    },
]


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "gd-provider",
        "name": "gd_provider (guarded gradient-descent retraining)",
        "description": "Feast -> Great Expectations -> Evidently -> Ray Train -> MLflow retraining with gates "
        "and rollback.",
        "versions": [__version__],
        "connection-types": CONNECTION_TYPES,
        "hooks": [
            {"integration-name": "Feast", "python-modules": ["gd_provider.hooks.feast"]},
            {"integration-name": "MLflow", "python-modules": ["gd_provider.hooks.mlflow"]},
            {"integration-name": "Ray", "python-modules": ["gd_provider.hooks.ray"]},
        ],
        "operators": [
            {"integration-name": "gd_provider", "python-modules": [
                "gd_provider.operators.features",
                "gd_provider.operators.validation",
                "gd_provider.operators.training",
                "gd_provider.operators.drift",
                "gd_provider.operators.registry",
                "gd_provider.operators.report",
                "gd_provider.operators.health",
            ]},
        ],
        "sensors": [
            {"integration-name": "Feast", "python-modules": ["gd_provider.sensors.features"]},
            {"integration-name": "MLflow", "python-modules": ["gd_provider.sensors.registry"]},
        ],
        "triggers": [
            {"integration-name": "Feast", "python-modules": ["gd_provider.triggers.features"]},
            {"integration-name": "Ray", "python-modules": ["gd_provider.triggers.ray"]},
        ],
        "extra-links": [
            "gd_provider.links.MlflowRunLink",
            "gd_provider.links.MlflowModelVersionLink",
            "gd_provider.links.ReportLink",
            "gd_provider.links.RayJobLink",
            "gd_provider.links.ValidationReportLink",
        ],
        "notifications": ["gd_provider.notifications.LogNotifier", "gd_provider.notifications.WebhookNotifier"],
        "integrations": [
            {"integration-name": name, "external-doc-url": url, "tags": ["software"]}
            for name, url in [
                ("Feast", "https://docs.feast.dev/"),
                ("MLflow", "https://mlflow.org/docs/latest/"),
                ("Ray", "https://docs.ray.io/"),
                ("gd_provider", "https://github.com/"),
            ]
        ],
    }
