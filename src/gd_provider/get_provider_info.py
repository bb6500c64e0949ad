"""Provider metadata read by Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from gd_provider import __version__


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "gd-provider",
        "name": "gd_provider (guarded gradient-descent retraining)",
        "description": "Feast -> Great Expectations -> Evidently -> Ray Train -> MLflow retraining with gates "
        "and rollback.",
        "versions": [__version__],
        "connection-types": [
            {"hook-class-name": "gd_provider.hooks.feast.FeastHook", "connection-type": "feast"},
            {"hook-class-name": "gd_provider.hooks.mlflow.MlflowHook", "connection-type": "mlflow"},
            {"hook-class-name": "gd_provider.hooks.ray.RayHook", "connection-type": "ray"},
        ],
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
