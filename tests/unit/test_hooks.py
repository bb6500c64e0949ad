"""Hooks turn connections into configuration; no connection = the embedded default."""

from __future__ import annotations

import json

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowNotFoundException

from gd_provider.get_provider_info import get_provider_info
from gd_provider.hooks.feast import FeastHook
from gd_provider.hooks.mlflow import MlflowHook
from gd_provider.hooks.ray import RayHook


def _conn(monkeypatch, conn_id: str, **fields):
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))


def test_embedded_defaults_live_under_the_project_home(gd_home):
    cfg = MlflowHook().get_config()
    assert cfg.tracking_uri == f"sqlite:///{gd_home / 'mlflow' / 'mlflow.db'}"
    assert cfg.artifact_root == str(gd_home / "mlflow" / "artifacts")
    assert FeastHook().repo_path() == gd_home / "feature_repo"
    assert RayHook().address() == "local"


def test_mlflow_server_connection_and_token_not_in_repr(gd_home, monkeypatch):
    _conn(monkeypatch, "mlflow_default", conn_type="mlflow", host="mlflow", port=5000, schema="http",
          password="s3cret-token")
    cfg = MlflowHook().get_config()
    assert cfg.tracking_uri == "http://mlflow:5000" and cfg.token == "s3cret-token"
    assert "s3cret-token" not in repr(cfg)
    _conn(monkeypatch, "mlflow_pg", conn_type="mlflow",
          extra={"tracking_uri": "postgresql://db/mlflow", "artifact_root": "/data/artifacts"})
    cfg = MlflowHook("mlflow_pg").get_config()
    assert (cfg.tracking_uri, cfg.artifact_root) == ("postgresql://db/mlflow", "/data/artifacts")


def test_missing_non_default_connection_is_an_error(gd_home):
    with pytest.raises(AirflowNotFoundException):
        MlflowHook("mlflow_prod").get_config()


def test_a_misspelled_extra_field_is_an_error_not_a_silent_default(gd_home, monkeypatch):
    """``tracking-uri`` for ``tracking_uri`` would otherwise leave the connection without a tracking URI and
    every worker on its own embedded store."""
    from gd_provider.hooks._base import ConnectionConfigError

    _conn(monkeypatch, "mlflow_default", conn_type="mlflow", extra={"tracking-uri": "http://mlflow:5000"})
    with pytest.raises(ConnectionConfigError, match=r"MLflow connection 'mlflow_default'.*\['tracking-uri'\].*tracking_uri"):
        MlflowHook().get_config()
    _conn(monkeypatch, "ray_default", conn_type="ray", host="http://ray-head:8265", extra={"adress": "x"})
    with pytest.raises(ConnectionConfigError, match=r"Ray connection 'ray_default'.*\['adress'\]"):
        RayHook().cluster_config()
    _conn(monkeypatch, "feast_default", conn_type="feast", extra={"repo": "/opt/repo"})
    with pytest.raises(ConnectionConfigError, match=r"Feast connection 'feast_default'.*\['repo'\].*repo_path"):
        FeastHook().repo_path()
    # a defined connection with no host is the embedded store on purpose (the UI's placeholder says so)
    _conn(monkeypatch, "mlflow_default", conn_type="mlflow", extra={"ui_url": "http://localhost:5000"})
    assert MlflowHook().get_config().tracking_uri == f"sqlite:///{gd_home / 'mlflow' / 'mlflow.db'}"


def test_ray_client_address_is_a_clear_error_naming_the_jobs_api(gd_home, monkeypatch):
    _conn(monkeypatch, "ray_default", conn_type="ray", host="ray://ray-head", port=10001)
    with pytest.raises(AirflowException, match=r"Ray Client address 'ray://ray-head'.*Jobs API.*http://ray-head:8265"):
        RayHook().address()
    _conn(monkeypatch, "ray_local", conn_type="ray", host="local")
    assert RayHook("ray_local").address() == "local" and RayHook("ray_local").is_local()


def test_ray_jobs_api_addresses(gd_home, monkeypatch):
    _conn(monkeypatch, "ray_default", conn_type="ray", host="http://ray-head:8265", password="tok-123")
    hook = RayHook()
    assert not hook.is_local()
    assert hook.address() == "http://ray-head:8265" == hook.dashboard_url()
    config = hook.cluster_config()
    assert config.token == "tok-123" and "tok-123" not in repr(config)
    assert config.auth_headers() == {"Authorization": "Bearer tok-123"}
    _conn(monkeypatch, "ray_parts", conn_type="ray", host="ray-head", port=8266, schema="http")
    assert RayHook("ray_parts").address() == "http://ray-head:8266"
    _conn(monkeypatch, "ray_host_only", conn_type="ray", host="ray-head")
    assert RayHook("ray_host_only").address() == "http://ray-head:8265"
    _conn(monkeypatch, "ray_https", conn_type="ray", host="https://ray.example.com/dash/",
          extra={"ui_url": "https://ray.example.com/ui", "python": "/opt/venv/bin/python"})
    hook = RayHook("ray_https")
    assert hook.address() == "https://ray.example.com/dash"
    assert hook.dashboard_url() == "https://ray.example.com/ui"
    assert hook.cluster_config().python == "/opt/venv/bin/python"
    _conn(monkeypatch, "ray_extra", conn_type="ray", extra={"address": "http://10.0.0.5:9999"})
    assert RayHook("ray_extra").address() == "http://10.0.0.5:9999"
    _conn(monkeypatch, "ray_url_port", conn_type="ray", host="http://ray-head", port=8270)
    assert RayHook("ray_url_port").address() == "http://ray-head:8270"
    _conn(monkeypatch, "ray_schema", conn_type="ray", host="ray-head", schema="ray", port=10001)
    with pytest.raises(AirflowException, match="schema 'ray'.*Jobs API"):
        RayHook("ray_schema").address()
    _conn(monkeypatch, "ray_gcs", conn_type="ray", host="grpc://ray-head:6379")
    with pytest.raises(AirflowException, match="unsupported scheme"):
        RayHook("ray_gcs").address()


def test_ray_job_client_sends_the_token_and_ignores_ray_address_env(gd_home, monkeypatch):
    import ray.job_submission

    seen = {}

    class FakeClient:
        def __init__(self, address, headers=None, verify=True):
            import os

            seen.update(address=address, headers=headers, env=os.environ.get("RAY_ADDRESS"))

    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", FakeClient)
    monkeypatch.setenv("RAY_ADDRESS", "http://somewhere-else:8265")
    _conn(monkeypatch, "ray_default", conn_type="ray", host="http://ray-head:8265", password="tok-123")
    RayHook().get_conn()
    assert seen == {"address": "http://ray-head:8265", "headers": {"Authorization": "Bearer tok-123"}, "env": None}
    import os

    assert os.environ["RAY_ADDRESS"] == "http://somewhere-else:8265"
    _conn(monkeypatch, "ray_local", conn_type="ray", host="local")
    with pytest.raises(AirflowException, match="embedded default"):
        RayHook("ray_local").get_conn()


def test_feast_hook_names_a_missing_repo(gd_home, monkeypatch):
    _conn(monkeypatch, "feast_default", conn_type="feast", extra={"repo_path": str(gd_home / "nope")})
    with pytest.raises(AirflowException, match="has no feature_store.yaml"):
        FeastHook().get_conn()


def test_provider_info_declares_the_three_connection_types():
    info = get_provider_info()
    types = {c["connection-type"]: c["hook-class-name"] for c in info["connection-types"]}
    assert types == {
        "feast": "gd_provider.hooks.feast.FeastHook",
        "mlflow": "gd_provider.hooks.mlflow.MlflowHook",
        "ray": "gd_provider.hooks.ray.RayHook",
    }
