"""Credentials never in a printable URI: the MLflow connection's user info moves out of its tracking/registry
URIs into the variables MLflow reads (MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN); every secret of a
connection, also inside URLs of its extras, is masked; Ray's processes and jobs get none of the task's
connection, variable, Airflow configuration or MLflow credential variables."""

from __future__ import annotations

import json
import os

import pytest

CRED_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


@pytest.fixture(autouse=True)
def _no_mlflow_credentials(monkeypatch):
    for name in CRED_VARS:
        monkeypatch.delenv(name, raising=False)
    yield
    from gd_provider.core import registry

    for name in list(getattr(registry, "_CREDENTIALS_SET", {})):
        registry._CREDENTIALS_SET.pop(name, None)
        os.environ.pop(name, None)


def _conn(monkeypatch, conn_id: str, **fields) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))


def test_user_info_of_the_tracking_uri_moves_to_mlflows_credential_variables(gd_home, monkeypatch):
    from mlflow.utils.credentials import get_default_host_creds

    from gd_provider.hooks.mlflow import MlflowHook

    _conn(monkeypatch, "mlflow_default", conn_type="mlflow",
          extra={"tracking_uri": "http://gd-user:p%40ss-7f3a1c@mlflow:5000",
                 "registry_uri": "https://gd-user:p%40ss-7f3a1c@registry:443/x"})
    config = MlflowHook().get_config()
    assert config.tracking_uri == "http://mlflow:5000" and config.registry_uri == "https://registry:443/x"
    assert "7f3a1c" not in repr(config) and config.ui_url == "http://mlflow:5000"
    config.activate()
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "gd-user"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "p@ss-7f3a1c"  # percent-decoded, as requests would send it
    creds = get_default_host_creds(config.tracking_uri)  # what MLflow's REST store sends
    assert (creds.host, creds.username, creds.password) == ("http://mlflow:5000", "gd-user", "p@ss-7f3a1c")


def test_login_and_password_are_basic_auth_a_password_alone_a_token(gd_home, monkeypatch):
    from gd_provider.hooks.mlflow import MlflowHook

    _conn(monkeypatch, "mlflow_default", conn_type="mlflow", host="mlflow", port=5000, login="gd", password="pw-91b2e0")
    config = MlflowHook().get_config()
    assert (config.tracking_uri, config.username, config.password, config.token) == (
        "http://mlflow:5000", "gd", "pw-91b2e0", None)
    _conn(monkeypatch, "mlflow_default", conn_type="mlflow", host="mlflow", port=5000, password="tok-5c77aa")
    assert (MlflowHook().get_config().token, MlflowHook().get_config().username) == ("tok-5c77aa", None)


def test_one_stores_credentials_are_never_sent_to_another(monkeypatch):
    from gd_provider.core.registry import MlflowConfig

    MlflowConfig(tracking_uri="http://a:pw-a@one:5000").activate()
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "pw-a"
    MlflowConfig(tracking_uri="http://two:5000", token="tok-b").activate()
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ and "MLFLOW_TRACKING_USERNAME" not in os.environ
    assert os.environ["MLFLOW_TRACKING_TOKEN"] == "tok-b"
    MlflowConfig(tracking_uri="sqlite:///x.db").activate()
    assert not any(name in os.environ for name in CRED_VARS)
    # credentials the deployment's environment gives MLflow itself are left alone
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "from-the-environment")
    MlflowConfig(tracking_uri="http://three:5000").activate()
    assert os.environ["MLFLOW_TRACKING_TOKEN"] == "from-the-environment"
    # a database URI keeps its credentials (SQLAlchemy needs them); the masker hides them from logs
    assert MlflowConfig(tracking_uri="postgresql://u:pw@db/mlflow").tracking_uri == "postgresql://u:pw@db/mlflow"


def test_every_secret_inside_a_connection_is_masked(gd_home, monkeypatch):
    from airflow.sdk._shared.secrets_masker import _secrets_masker, redact

    from gd_provider.hooks._base import GdBaseHook, url_secrets

    _secrets_masker().min_length_to_mask = 5
    secrets = {"password": "conn-pw-11aa22", "uri_pw": "uri-pw-33bb44", "token_user": "user-token-55cc66",
               "query": "query-sig-77dd88", "decoded": "dec@pw-99ee00", "key": "extra-key-a1b2c3"}
    _conn(monkeypatch, "some_service", conn_type="http", host="https://user-token-55cc66@api.example.com",
          password=secrets["password"],
          extra={"api_key": secrets["key"],
                 "targets": [f"postgresql://app:{secrets['uri_pw']}@db/app",
                             f"https://s3.example.com/b/o?X-Amz-Signature={secrets['query']}&x=1",
                             "http://u:dec%40pw-99ee00@h:1"]})
    hook = GdBaseHook("some_service")
    hook.connection()
    text = " ".join(["logged:", *secrets.values(), "dec%40pw-99ee00"])
    assert not [name for name, value in secrets.items() if value in redact(text)], redact(text)
    assert "dec%40pw-99ee00" not in redact(text)
    assert url_secrets("no url here") == [] and url_secrets("see http://host:5000/x?page=2") == []


def test_ray_processes_and_jobs_get_none_of_the_tasks_secret_variables():
    from gd_provider.core.training.worker_env import hidden_names, job_env_vars

    env = {"AIRFLOW_CONN_MLFLOW_DEFAULT": "x", "AIRFLOW_VAR_K": "x", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "x",
           "MLFLOW_TRACKING_PASSWORD": "x", "MLFLOW_TRACKING_TOKEN": "x", "PATH": "/bin", "GD_PROVIDER_HOME": "/h",
           "AWS_SECRET_ACCESS_KEY": "for-the-storage", "PYTHONPATH": "/src", "MLFLOW_DISABLE_TELEMETRY": "true"}
    assert hidden_names(env) == ["AIRFLOW_CONN_MLFLOW_DEFAULT", "AIRFLOW_VAR_K", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
                                 "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"]
    assert job_env_vars(env) == {"PATH": "/bin", "GD_PROVIDER_HOME": "/h", "AWS_SECRET_ACCESS_KEY": "for-the-storage",
                                 "PYTHONPATH": "/src", "MLFLOW_DISABLE_TELEMETRY": "true"}
