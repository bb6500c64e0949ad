"""Human approval before promotion: Airflow 3.3's HITL ``ApprovalOperator`` showing the release gate's verdict."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param
from airflow.sdk.definitions.param import ParamsDict
from airflow.sdk.exceptions import AirflowSkipException

from gd_provider.operators._common import actor, run_key

APPROVAL_TAG = "gd.approval"
ON_TIMEOUT = ("reject", "fail")


def approval_record(event: Mapping[str, Any], *, timed_out: bool = False) -> dict[str, Any]:
    """What a person (or the timeout) decided, as the audit trail and the version's tag keep it."""
    chosen = list(event.get("chosen_options") or [])
    user = event.get("responded_by_user") or {}
    at = event.get("responded_at")
    comment = (event.get("params_input") or {}).get("comment")
    return {"decision": "approved" if chosen == [ApprovalOperator.APPROVE] else "rejected",
            "by": user.get("name") or user.get("id") or ("timeout" if timed_out else "unknown"),
            "by_id": user.get("id"), "at": at.isoformat() if isinstance(at, datetime) else at,
            "comment": comment or None, "timed_out": timed_out}


def gate_body(gate: Mapping[str, Any], model: Mapping[str, Any], link: str | None) -> str:
    """The approval form's text (Markdown): the gate's verdict, its reasons and the compared metrics."""
    verdict = "**blessed**" if gate.get("blessed") else "**rejected** (a forced promotion)"
    lines = [f"The release gate {verdict} {model.get('name')} v{model.get('version')} against champion "
             f"{'v' + str(gate['champion_version']) if gate.get('champion_version') else '(none yet)'}.", "",
             "Reasons:", *[f"- {r}" for r in gate.get("reasons") or []], ""]
    mine, theirs = gate.get("challenger_metrics") or {}, gate.get("champion_metrics") or {}
    if mine:
        lines += ["| metric | challenger | champion |", "| --- | --- | --- |"]
        for name in sorted(mine):
            value = mine[name]
            if isinstance(value, int | float):
                other = theirs.get(name)
                lines.append(f"| {name} | {value:.4f} | {other:.4f} |" if isinstance(other, int | float)
                             else f"| {name} | {value:.4f} | |")
    if gate.get("operating_points"):
        lines += ["", f"Operating points: `{json.dumps(gate['operating_points'], default=str)}`"]
    if link:
        lines += ["", f"[The version in MLflow]({link})"]
    return "\n".join(lines)


class PromotionApprovalOperator(ApprovalOperator):
    """Ask a person to approve the promotion of the version this run registered, showing the gate's reasons
    and metrics; the answer (who, when, comment) goes into the version's ``gd.approval`` tag and the audit trail.

    :param model: the registration's output (``name``, ``version``; templated).
    :param gate: the evaluation gate's decision (templated).
    :param alias: the alias the promotion would move.
    :param on_timeout: ``reject`` (default: the timeout rejects, champion unchanged) or ``fail`` the task.
    :param response_timeout: how long to wait for an answer (None: forever).
    :param assigned_users: who may answer (``[{"id": ..., "name": ...}]``; None: anyone with access).
    :param mlflow_conn_id: where the version and the audit trail live.

    Approve: the downstream promotion runs and records the approval in its audit entry. Reject (or the timeout
    with ``on_timeout: reject``): the promotion and what follows it are skipped, the champion does not move,
    and the rejection is an audit entry of its own. A challenger the gate rejected (and nobody forces) is not
    put to a person: the task is skipped, as the promotion would be.
    """

    template_fields: Sequence[str] = (*ApprovalOperator.template_fields, "model", "gate", "force_reason", "mlflow_conn_id")

    def __init__(self, *, model: Any, gate: Any, alias: str = "champion", force_reason: Any = None,
                 on_timeout: str = "reject", response_timeout: timedelta | None = timedelta(hours=24),
                 assigned_users: list[dict[str, str]] | None = None, mlflow_conn_id: str = "mlflow_default",
                 params: Any = None, **kwargs: Any) -> None:
        if on_timeout not in ON_TIMEOUT:
            raise ValueError(f"{kwargs.get('task_id')}: on_timeout must be one of {list(ON_TIMEOUT)}, got {on_timeout!r}")
        # the form's one field; the DAG's run Params (merged in by Airflow) are left out of it by HITLOperator
        form = ParamsDict(params or {})
        form["comment"] = Param(None, type=["null", "string"], title="Comment", source="task",
                                description="Why: goes into the model's audit trail with your name")
        super().__init__(
            subject="Promote the challenger?", body=None,
            defaults=[ApprovalOperator.REJECT] if on_timeout == "reject" else None,
            response_timeout=response_timeout, assigned_users=assigned_users, params=form, **kwargs,
        )
        self.model, self.gate, self.alias, self.force_reason = model, gate, alias, force_reason
        self.on_timeout, self.mlflow_conn_id = on_timeout, mlflow_conn_id

    def execute(self, context: Any) -> Any:
        from gd_provider.hooks.mlflow import MlflowHook
        from gd_provider.links import mlflow_model_version_url

        gate, model = dict(self.gate or {}), dict(self.model or {})
        if not gate.get("blessed") and not str(self.force_reason or "").strip():
            raise AirflowSkipException(f"the gate rejected {model.get('name')} v{model.get('version')}: nothing to "
                                       "approve")
        config = MlflowHook(self.mlflow_conn_id).get_config()
        self.subject = f"Promote {model.get('name')} v{model.get('version')} to @{self.alias}?"
        self.body = gate_body(gate, model, mlflow_model_version_url(config.ui_url, str(model.get("name")),
                                                                    str(model.get("version"))))
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        if "error" in event:  # no answer and no default (on_timeout: fail), or an invalid answer: the task fails
            return super().execute_complete(context, event)
        record = approval_record(event, timed_out=bool(event.get("timedout")))
        self._record(context, record)
        model = dict(self.model or {})
        self.log.info("Promotion of %s v%s %s by %s%s", model.get("name"), model.get("version"), record["decision"],
                      record["by"], f": {record['comment']}" if record["comment"] else "")
        super().execute_complete(context, event)  # a rejection skips the promotion and what follows it
        return record

    def _record(self, context: Any, record: dict[str, Any]) -> None:
        """The version's ``gd.approval`` tag, and for a rejection an audit entry (the champion does not move)."""
        from gd_provider.core.registry import record_decision
        from gd_provider.hooks.mlflow import MlflowHook

        model = dict(self.model or {})
        client = MlflowHook(self.mlflow_conn_id).get_config().client()
        client.set_model_version_tag(model["name"], str(model["version"]), APPROVAL_TAG,
                                     json.dumps(record, sort_keys=True, default=str)[:5000])
        if record["decision"] == "rejected":
            record_decision(client, model["name"], {
                "action": "promotion_rejected", "alias": self.alias, "version": str(model["version"]),
                "actor": record["by"], "reason": record["comment"] or ("timed out" if record["timed_out"] else ""),
                "dag_run": run_key(context), "triggered_by": actor(context),
                "change_id": f"approval:{run_key(context)}:{model['version']}"})
