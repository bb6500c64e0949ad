"""The connection forms Airflow 3.3 builds from our provider info (not from the hooks), as its API serves
them to the UI: labels, placeholders, types, hidden fields, the secret field masked."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def forms():
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

    return {m.connection_type: m for m in HookMetaService.hook_meta_data()}


@pytest.mark.parametrize(("conn_type", "hook_path", "hidden", "fields"), [
    ("feast", "gd_provider.hooks.feast.FeastHook", {"host", "url_schema", "login", "port"},
     {"repo_path", "password_env"}),
    ("mlflow", "gd_provider.hooks.mlflow.MlflowHook", {"login"},
     {"tracking_uri", "registry_uri", "artifact_root", "ui_url"}),
    ("ray", "gd_provider.hooks.ray.RayHook", {"login"}, {"address", "python", "runtime_env", "verify", "ui_url"}),
])
def test_forms_are_declarative_and_match_what_the_hooks_read(forms, conn_type, hook_path, hidden, fields):
    import importlib

    form = forms[conn_type]
    assert form.hook_class_name == hook_path and form.hook_name
    standard = form.standard_fields.model_dump()
    assert {name for name, f in standard.items() if f and f.get("hidden")} >= hidden
    assert not standard["password"]["hidden"] and standard["password"]["title"]  # the secret: a password field
    extra = form.extra_fields or {}
    assert set(extra) == fields
    for name, field in extra.items():
        assert field["schema"]["title"] and field["description"], name
        assert field["schema"]["type"][0] in ("string", "boolean", "object"), name
    # every form field is an extra key the hook reads (a stored form is accepted), and nothing it reads is missing
    module, _, cls = hook_path.rpartition(".")
    hook = getattr(importlib.import_module(module), cls)
    known = getattr(hook, "extra_fields", None) or importlib.import_module(module).RAY_EXTRA_FIELDS
    assert set(known) == fields


def test_placeholders_reach_the_extra_fields_and_the_hooks_no_longer_define_forms(forms):
    from airflow.providers_manager import ProvidersManager

    behaviours = ProvidersManager().field_behaviours
    assert behaviours["mlflow"]["placeholders"]["extra__mlflow__tracking_uri"] == "http://mlflow:5000"
    assert behaviours["feast"]["placeholders"]["extra__feast__repo_path"] == "/opt/feature_repo"
    assert "extra" in behaviours["ray"]["hidden_fields"]  # no raw JSON box: the fields above instead
    from gd_provider.hooks.feast import FeastHook
    from gd_provider.hooks.mlflow import MlflowHook
    from gd_provider.hooks.ray import RayHook

    for hook in (FeastHook, MlflowHook, RayHook):
        assert "get_ui_field_behaviour" not in vars(hook)  # deprecated in 3.3 and ignored once declared


def test_a_connection_saved_from_the_form_is_read_by_the_hook(monkeypatch, tmp_path):
    """The UI stores conn-fields in the extra under their names: the hook reads exactly those."""
    from airflow.models.connection import Connection

    from gd_provider.hooks.mlflow import MlflowHook

    conn = Connection(conn_id="mlflow_form", conn_type="mlflow", password="tok",
                      extra=json.dumps({"tracking_uri": f"sqlite:///{tmp_path}/m.db", "ui_url": "https://ml.example"}))
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_FORM", conn.as_json())
    config = MlflowHook("mlflow_form").get_config()
    assert config.tracking_uri == f"sqlite:///{tmp_path}/m.db" and config.ui_url == "https://ml.example"
