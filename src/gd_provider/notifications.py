"""Alerts for gate failures, release failures and rollbacks: Airflow notifiers usable as task/DAG callbacks.

* :class:`LogNotifier` (the default) writes one structured ``GD-ALERT`` line to the task log.
* :class:`WebhookNotifier` POSTs JSON to a URL held in an Airflow connection (``http`` type: the full URL
  in ``host``, or ``schema``/``host``/``port``/``extra.endpoint``); ``slack=True`` sends Slack's
  incoming-webhook shape ``{"text": …}``. The URL (which carries the webhook's secret) never appears in
  logs, XCom or the message.

Each alert says which DAG run and task, what happened (``event``), why (the task's exception) and, when
the notifier was given one, what the operator should do now (``action``)::

    [gd_provider] rollback failed: gd_nightly_fraud_retraining / rollback (run scheduled__2026-03-02)
    reason: rollback of fraud_detector@champion refused: ...
    action: fraud_detector@champion may still serve the model that failed its smoke test: act by hand ...

Use them as ``on_failure_callback=[LogNotifier(), WebhookNotifier("alerts_webhook")]`` on gate and release
tasks (and the DAG), and ``on_success_callback`` on rollback tasks; the DAG factory does this from the
``alerting`` config.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from airflow.sdk import BaseNotifier

log = logging.getLogger(__name__)


def alert_payload(context: Any, event: str, action: str = "") -> dict[str, Any]:
    """What an alert says: which DAG run and task, what happened, why, what to do, and where to look.
    A DAG-level alert has no task (``task_id`` None); its reason is Airflow's (e.g. ``task_failure``)."""
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    exception = context.get("exception")
    reason = str(exception) if exception else context.get("reason", "")
    links = {}
    for attr in ("log_url",):
        url = getattr(ti, attr, None)
        if url:
            links["task_log"] = url
    payload = {
        "event": event,
        "dag_id": getattr(dag_run, "dag_id", None),
        "run_id": getattr(dag_run, "run_id", None),
        "task_id": getattr(ti, "task_id", None),
        "try_number": getattr(ti, "try_number", None),
        "reason": reason[:4000],
        "links": links,
    }
    if action:
        payload["action"] = action
    return payload


def alert_text(payload: dict[str, Any]) -> str:
    where = payload["dag_id"] if payload.get("task_id") is None else f"{payload['dag_id']} / {payload['task_id']}"
    lines = [f"[gd_provider] {payload['event']}: {where} (run {payload['run_id']})"]
    if payload.get("reason"):
        lines.append(f"reason: {payload['reason']}")
    if payload.get("action"):
        lines.append(f"action: {payload['action']}")
    for name, url in payload.get("links", {}).items():
        lines.append(f"{name}: {url}")
    return "\n".join(lines)


class _Notifier(BaseNotifier):
    """A notifier that also runs as a DAG-level callback on the scheduler's or ``dag.test``'s DAG object:
    there the context's ``dag`` is a ``SerializedDAG``, which has no ``get_template_env`` (BaseNotifier
    would raise AttributeError and the alert would be lost)."""

    def get_template_env(self, dag: Any = None) -> Any:
        if dag is not None and hasattr(dag, "get_template_env"):
            return dag.get_template_env(force_sandboxed=False)
        from jinja2.sandbox import SandboxedEnvironment

        return SandboxedEnvironment(cache_size=0)


class LogNotifier(_Notifier):
    """Log the alert (always available; the default when no webhook is configured)."""

    def __init__(self, event: str = "gate failed", *, action: str = "") -> None:
        super().__init__()
        self.event = event
        self.action = action

    def notify(self, context: Any) -> None:
        payload = alert_payload(context, self.event, self.action)
        log.warning("GD-ALERT %s", json.dumps(payload, sort_keys=True, default=str))


class WebhookNotifier(_Notifier):
    """POST the alert as JSON to the URL of Airflow connection ``webhook_conn_id``."""

    def __init__(self, webhook_conn_id: str, event: str = "gate failed", *, action: str = "", slack: bool = False,
                 timeout: float = 10.0) -> None:
        super().__init__()
        self.webhook_conn_id = webhook_conn_id
        self.event = event
        self.action = action
        self.slack = slack
        self.timeout = timeout

    def _url(self) -> str:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(self.webhook_conn_id)
        host = conn.host or ""
        if "://" in host:
            url = host
        else:
            port = f":{conn.port}" if conn.port else ""
            url = f"{conn.schema or 'https'}://{host}{port}"
        endpoint = conn.extra_dejson.get("endpoint", "")
        if endpoint:
            url = url.rstrip("/") + "/" + endpoint.lstrip("/")
        if conn.password:
            url = url.replace("{password}", conn.password)
        return url

    def notify(self, context: Any) -> None:
        import requests

        payload = alert_payload(context, self.event, self.action)
        body = {"text": alert_text(payload)} if self.slack else payload
        url = self._url()
        try:
            resp = requests.post(url, json=body, timeout=self.timeout)
            resp.raise_for_status()
        except requests.RequestException as exc:
            # never let an alerting outage hide the original failure; never print the secret URL
            log.error("GD-ALERT webhook %r failed: %s", self.webhook_conn_id, type(exc).__name__)
            return
        log.info("GD-ALERT sent to webhook %r", self.webhook_conn_id)
