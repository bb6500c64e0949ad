"""The "Trigger DAG" form of every shipped DAG submits with its defaults: the serialized DAG's Params (what
the API server and the UI hold) validated by Airflow's own code with the values the form sends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def serialized_dags():
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    # through JSON, as the dag-processor stores it and the API server reads it
    return {dag_id: DagSerialization.from_dict(json.loads(json.dumps(DagSerialization.to_dict(dag))))
            for dag_id, dag in bag.dags.items()}


def _form_values(params) -> dict:
    """What the trigger form sends when nothing is edited: each field's shown (default) value."""
    return {name: params.get_param(name).value for name in params}


def test_every_retraining_param_is_optional_described_and_submits_with_defaults(serialized_dags):
    dag = serialized_dags["gd_nightly_fraud_retraining"]
    params = dag.params
    assert {"training_overrides", "drift_policy", "skip_drift_reason", "force_promotion_reason", "as_of",
            "smoke_test_max_p95_latency_ms"} <= set(params)
    for name in params:
        param = params.get_param(name)
        schema = param.schema
        assert param.description, name
        types = schema.get("type", [])
        types = [types] if isinstance(types, str) else types
        empty = param.value in (None, "")
        # the form marks a field required unless its type admits null; an empty required field blocks Trigger
        assert not empty or "null" in types, (name, schema, param.value)
    resolved = params.deep_merge(_form_values(params)).validate()
    assert resolved["skip_drift_reason"] is None and resolved["as_of"] is None
    assert params.deep_merge({}).validate()["drift_policy"] == "retrain"
    # what a person types is still checked
    with pytest.raises(Exception, match="as_of"):
        params.deep_merge({"as_of": "yesterday"}).validate()
    ok = params.deep_merge({"as_of": "2026-02-01", "force_promotion_reason": "hotfix for a known bad night"})
    assert ok.validate()["as_of"] == "2026-02-01"


def test_the_manual_rollback_form_is_described_and_needs_only_a_reason(serialized_dags):
    params = serialized_dags["gd_manual_rollback"].params
    for name in params:
        assert params.get_param(name).description, name
    with pytest.raises(Exception, match="reason"):
        params.deep_merge(_form_values(params)).validate()
    values = {**_form_values(params), "reason": "v3 drifts in production"}
    assert params.deep_merge(values).validate()["to_version"] == "previous"
