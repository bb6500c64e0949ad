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


def test_ray_cluster_address_is_a_clear_error_not_a_fallback(gd_home, monkeypatch):
    _conn(monkeypatch, "ray_default", conn_type="ray", host="ray://ray-head", port=10001)
    with pytest.raises(AirflowException, match=r"cluster 'ray://ray-head:10001'.*not supported yet"):
        RayHook().address()
    _conn(monkeypatch, "ray_local", conn_type="ray", host="local")
    assert RayHook("ray_local").address() == "local"


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
