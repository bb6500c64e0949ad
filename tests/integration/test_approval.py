"""Human approval before promotion (issue 14): Airflow 3.3's HITL ApprovalOperator between register and promote,
against a real MLflow store. The answer is fed to the operator as Airflow resumes it (the event the Core API's
response handler and the scheduler's timeout sweep build); tests/system answers one through the REST API on a
real scheduler."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from gd_provider.core import registry
from gd_provider.factory import build_retraining_dag
from gd_provider.operators.approval import APPROVAL_TAG, PromotionApprovalOperator
from gd_provider.operators.registry import PromoteModelOperator

from ..support import FakeTI, fake_context, register_scorer

pytestmark = pytest.mark.integration
NAME = "approved_model"


@pytest.fixture
def versions(gd_home):
    from gd_provider.hooks.mlflow import MlflowHook

    config = MlflowHook().get_config()
    client = config.client()
    experiment = registry.ensure_experiment(client, NAME, config.artifact_root)
    v1 = register_scorer(client, experiment, NAME, "d/r1", {})
    registry.promote(client, NAME, v1, actor="scheduler", reason="first")
    v2 = register_scorer(client, experiment, NAME, "d/r2", {})
    return client, v1, v2


def _gate(v1: str) -> dict:
    return {"blessed": True, "reasons": ["fpr 0.0190 <= 0.0300: pass"], "champion_version": v1,
            "challenger_metrics": {"fpr": 0.019, "roc_auc": 0.91}, "champion_metrics": {"fpr": 0.02, "roc_auc": 0.9}}


def _approval(v2: str, v1: str, **kw) -> PromotionApprovalOperator:
    op = PromotionApprovalOperator(task_id="approve_promotion", model={"name": NAME, "version": v2}, gate=_gate(v1),
                                   **kw)
    op.skip = lambda ti, tasks: None  # the skip of downstream tasks needs a scheduler; its XCom is what we check
    return op


def _event(choice: str, user: str | None = "alice", comment: str | None = None, timedout: bool = False) -> dict:
    return {"chosen_options": [choice], "params_input": {"comment": comment},
            "responded_at": datetime(2026, 2, 1, 9, 30, tzinfo=UTC),
            "responded_by_user": {"id": user, "name": user} if user else None, "timedout": timedout}


def test_an_approval_goes_into_the_version_tag_and_the_promotion_s_audit_entry(versions):
    client, v1, v2 = versions
    op = _approval(v2, v1)
    assert op.params.get_param("comment").value is None  # optional: the form submits without a comment
    record = op.execute_complete(fake_context(), _event("Approve", comment="FPR within budget, flips 1 %"))
    assert record["decision"] == "approved" and record["by"] == "alice"
    tag = json.loads(client.get_model_version(NAME, v2).tags[APPROVAL_TAG])
    assert tag == record
    ti = FakeTI()
    PromoteModelOperator(task_id="promote", model={"name": NAME, "version": v2}, gate=_gate(v1),
                         approval=record).execute(fake_context(ti=ti))
    assert registry.get_alias_version(client, NAME, "champion") == v2
    entry = registry.audit_trail(client, NAME)[-1]
    assert entry["action"] == "promote" and entry["to"] == v2
    assert entry["approval"] == {"by": "alice", "by_id": "alice", "at": "2026-02-01T09:30:00+00:00",
                                 "comment": "FPR within budget, flips 1 %", "timed_out": False}


def test_a_rejection_leaves_the_champion_and_is_audited_once(versions):
    client, v1, v2 = versions
    op = _approval(v2, v1)
    for _ in range(2):  # a retried task records it once
        record = op.execute_complete(fake_context(), _event("Reject", user="bob", comment="flip rate too high"))
    assert record["decision"] == "rejected"
    assert registry.get_alias_version(client, NAME, "champion") == v1
    rejected = [e for e in registry.audit_trail(client, NAME) if e["action"] == "promotion_rejected"]
    assert len(rejected) == 1 and rejected[0]["actor"] == "bob" and rejected[0]["reason"] == "flip rate too high"
    # a promotion task handed a rejection refuses to move anything
    with pytest.raises(AirflowFailException, match="needs a person's approval"):
        PromoteModelOperator(task_id="promote", model={"name": NAME, "version": v2}, gate=_gate(v1),
                             approval=record).execute(fake_context())
    assert registry.get_alias_version(client, NAME, "champion") == v1


def test_the_timeout_policy(versions):
    client, v1, v2 = versions
    op = _approval(v2, v1, response_timeout=timedelta(minutes=5))
    assert op.defaults == ["Reject"]  # on_timeout: reject
    record = op.execute_complete(fake_context(), _event("Reject", user=None, timedout=True))
    assert record["decision"] == "rejected" and record["timed_out"] and record["by"] == "timeout"
    assert registry.get_alias_version(client, NAME, "champion") == v1
    strict = _approval(v2, v1, on_timeout="fail")
    assert strict.defaults is None
    with pytest.raises(Exception, match="timeout"):
        strict.execute_complete(fake_context(), {"error": "no response", "error_type": "timeout"})
    with pytest.raises(ValueError, match="on_timeout must be one of"):
        _approval(v2, v1, on_timeout="approve")


def test_a_rejected_challenger_is_not_put_to_a_person(versions):
    _, v1, v2 = versions
    op = PromotionApprovalOperator(task_id="approve_promotion", model={"name": NAME, "version": v2},
                                   gate={**_gate(v1), "blessed": False})
    with pytest.raises(AirflowSkipException, match="nothing to approve"):
        op.execute(fake_context())


def test_the_factory_puts_the_approval_between_register_and_promote():
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    cfg = yaml.safe_load((root / "dags" / "configs" / "fraud_detector.yaml").read_text())
    cfg["approval"] = {"required": True, "timeout_hours": 12, "assigned_users": [{"id": "alice", "name": "alice"}]}
    dag = build_retraining_dag(cfg, auto_register=False)
    approve = dag.task_dict["approve_promotion"]
    assert {"register", "evaluate"} <= approve.upstream_task_ids
    assert "approve_promotion" in dag.task_dict["promote"].upstream_task_ids
    assert approve.response_timeout == timedelta(hours=12) and approve.assigned_users == [{"id": "alice", "name": "alice"}]
    assert set(approve.serialized_params) == {"comment"}  # the form: a comment, not the DAG's run Params
    assert "approve_promotion" not in build_retraining_dag(
        yaml.safe_load((root / "dags" / "configs" / "fraud_detector.yaml").read_text()), auto_register=False).task_dict
