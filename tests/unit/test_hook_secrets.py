"""The feast connection's password fills ``${REDIS_PASSWORD}`` in feature_store.yaml, only while Feast loads
the file: it never lands in the repo or stays in the process environment."""

from __future__ import annotations

import json
import os

import yaml

from gd_provider.demo.feature_repo import feature_store_config
from gd_provider.hooks.feast import FeastHook

SECRET = "feast-conn-s3cret"


def _repo(tmp_path, connection_string: str):
    repo = tmp_path / "repo"
    repo.mkdir()
    config = feature_store_config(repo, {"type": "redis", "connection_string": connection_string})
    (repo / "feature_store.yaml").write_text(yaml.safe_dump(config))
    return repo


def _conn(monkeypatch, conn_id: str, **fields):
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))


def test_connection_password_is_expanded_into_the_online_store_config(gd_home, tmp_path, monkeypatch):
    monkeypatch.delenv("REDIS_PASSWORD", raising=False)
    repo = _repo(tmp_path, "redis:6379,db=3,password=${REDIS_PASSWORD}")
    _conn(monkeypatch, "feast_default", conn_type="feast", password=SECRET, extra={"repo_path": str(repo)})
    store = FeastHook().get_conn()
    assert store.config.online_store.connection_string == f"redis:6379,db=3,password={SECRET}"
    assert "REDIS_PASSWORD" not in os.environ
    assert SECRET not in (repo / "feature_store.yaml").read_text()


def test_password_env_names_the_variable_and_an_existing_value_is_restored(gd_home, tmp_path, monkeypatch):
    monkeypatch.setenv("ONLINE_PW", "from-the-environment")
    repo = _repo(tmp_path, "redis:6379,password=${ONLINE_PW}")
    _conn(monkeypatch, "feast_other", conn_type="feast", password=SECRET,
          extra={"repo_path": str(repo), "password_env": "ONLINE_PW"})
    store = FeastHook("feast_other").get_conn()
    assert store.config.online_store.connection_string == f"redis:6379,password={SECRET}"
    assert os.environ["ONLINE_PW"] == "from-the-environment"


def test_without_a_password_the_environment_applies_as_before(gd_home, tmp_path, monkeypatch):
    monkeypatch.setenv("REDIS_PASSWORD", "env-pw")
    repo = _repo(tmp_path, "redis:6379,password=${REDIS_PASSWORD}")
    _conn(monkeypatch, "feast_default", conn_type="feast", extra={"repo_path": str(repo)})
    assert FeastHook().get_conn().config.online_store.connection_string == "redis:6379,password=env-pw"


def test_secrets_inside_extras_and_urls_are_masked(gd_home, monkeypatch):
    from airflow.sdk._shared.secrets_masker import _secrets_masker, redact

    from gd_provider.hooks.mlflow import MlflowHook
    from gd_provider.hooks.ray import RayHook

    _secrets_masker().min_length_to_mask = 5  # as in a task process (the default config in tests may differ)
    url_pw, extra_token = "url-pw-4f1b9c", "extra-token-77ad2e"
    _conn(monkeypatch, "mlflow_default", conn_type="mlflow", extra={"tracking_uri": f"http://gd:{url_pw}@mlflow:5000"})
    _conn(monkeypatch, "ray_default", conn_type="ray", host="http://ray-head:8265",
          extra={"runtime_env": {"env_vars": {"AWS_SECRET_ACCESS_KEY": extra_token}}})
    assert url_pw in redact(f"talking to http://gd:{url_pw}@mlflow:5000")  # not masked before the lookup
    config = MlflowHook().get_config()
    assert RayHook().cluster_config().runtime_env["env_vars"]["AWS_SECRET_ACCESS_KEY"] == extra_token
    text = f"MLflow at {config.tracking_uri} with {extra_token}"
    assert url_pw not in redact(text) and extra_token not in redact(text), redact(text)
    # links are built from the UI url: no credentials in what is recorded
    assert config.ui_url == "http://mlflow:5000"


def test_strip_credentials():
    from gd_provider.hooks._base import strip_credentials
    from gd_provider.hooks.ray import parse_ray_connection

    assert strip_credentials("http://u:p@host:5000/x?y=1") == "http://host:5000/x?y=1"
    assert strip_credentials("https://token@[::1]:8265") == "https://[::1]:8265"
    assert strip_credentials("http://host:5000") == "http://host:5000"
    assert strip_credentials("postgresql://u:p@db/mlflow") == "postgresql://db/mlflow"
    assert strip_credentials("not a url @ all") == "not a url @ all"
    assert strip_credentials(None) is None
    cfg = parse_ray_connection("https://u:pw@ray-head:8265", None, None, "tok", {})
    assert cfg.link_base == "https://ray-head:8265"
