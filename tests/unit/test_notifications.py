"""Alerts: the log notifier, and a webhook notifier against a real HTTP server on loopback."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

import pytest

from gd_provider.notifications import LogNotifier, WebhookNotifier, alert_payload, alert_text


@pytest.fixture
def webhook():
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            length = int(self.headers["Content-Length"])
            received.append({"path": self.path, "body": json.loads(self.rfile.read(length))})
            self.send_response(200 if "/ok" in self.path else 500)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], received
    server.shutdown()


def _context(reason: str) -> dict:
    return {
        "dag_run": SimpleNamespace(dag_id="gd_nightly", run_id="scheduled__2026-03-01"),
        "ti": SimpleNamespace(task_id="validate", try_number=1, log_url="http://airflow/log/validate"),
        "exception": RuntimeError(reason),
    }


def test_log_notifier_writes_one_structured_line(caplog):
    with caplog.at_level(logging.WARNING):
        LogNotifier("gate failed").notify(_context("3 expectations failed"))
    line = next(r.getMessage() for r in caplog.records if "GD-ALERT" in r.getMessage())
    payload = json.loads(line.split("GD-ALERT ", 1)[1])
    assert payload["task_id"] == "validate" and payload["reason"] == "3 expectations failed"
    assert payload["links"]["task_log"] == "http://airflow/log/validate"


def test_webhook_notifier_posts_json_and_slack_text(webhook, monkeypatch):
    port, received = webhook
    monkeypatch.setenv("AIRFLOW_CONN_ALERTS", json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "port": port, "schema": "http", "password": "tok3n",
        "extra": {"endpoint": "/ok/{password}"}}))
    WebhookNotifier("alerts", "rollback").notify(_context("smoke test failed"))
    WebhookNotifier("alerts", slack=True).notify(_context("drift blocked"))
    assert received[0]["path"] == "/ok/tok3n"
    assert received[0]["body"]["event"] == "rollback" and received[0]["body"]["reason"] == "smoke test failed"
    assert received[1]["body"]["text"].startswith("[gd_provider] gate failed: gd_nightly / validate")
    assert "tok3n" not in json.dumps([r["body"] for r in received])


def test_webhook_failure_is_logged_without_the_secret_url(webhook, monkeypatch, caplog):
    port, received = webhook
    monkeypatch.setenv("AIRFLOW_CONN_ALERTS", json.dumps({
        "conn_type": "http", "host": f"http://127.0.0.1:{port}/fail/s3cret"}))
    with caplog.at_level(logging.ERROR):
        WebhookNotifier("alerts").notify(_context("x"))  # must not raise
    assert len(received) == 1
    text = caplog.text
    assert "webhook 'alerts' failed: HTTPError" in text and "s3cret" not in text


def _rollback_failed_context() -> dict:
    return {
        "dag_run": SimpleNamespace(dag_id="gd_nightly", run_id="scheduled__2026-03-02"),
        "ti": SimpleNamespace(task_id="rollback", try_number=1, log_url="http://airflow/log/rollback"),
        "exception": RuntimeError("rollback of fraud_detector@champion refused: champion moved to v7"),
    }


ROLLBACK_ACTION = "Act by hand: trigger gd_manual_rollback with a version and a reason."


def test_a_failed_rollback_alert_says_what_happened_and_what_to_do(caplog):
    with caplog.at_level(logging.WARNING):
        LogNotifier("rollback failed", action=ROLLBACK_ACTION).notify(_rollback_failed_context())
    line = next(r.getMessage() for r in caplog.records if "GD-ALERT" in r.getMessage())
    payload = json.loads(line.split("GD-ALERT ", 1)[1])
    assert payload["event"] == "rollback failed" and payload["task_id"] == "rollback"
    assert payload["reason"].startswith("rollback of fraud_detector@champion refused")
    assert payload["action"] == ROLLBACK_ACTION
    text = alert_text(payload)
    assert text.splitlines()[0] == "[gd_provider] rollback failed: gd_nightly / rollback (run scheduled__2026-03-02)"
    assert f"action: {ROLLBACK_ACTION}" in text.splitlines()


def test_webhook_carries_the_action_in_json_and_slack_text(webhook, monkeypatch):
    port, received = webhook
    monkeypatch.setenv("AIRFLOW_CONN_ALERTS", json.dumps({"conn_type": "http", "host": f"http://127.0.0.1:{port}/ok"}))
    WebhookNotifier("alerts", "rollback failed", action=ROLLBACK_ACTION).notify(_rollback_failed_context())
    WebhookNotifier("alerts", "rollback failed", action=ROLLBACK_ACTION, slack=True).notify(_rollback_failed_context())
    assert received[0]["body"]["action"] == ROLLBACK_ACTION
    assert f"action: {ROLLBACK_ACTION}" in received[1]["body"]["text"]


def test_a_dag_level_alert_has_no_task_and_keeps_the_airflow_reason():
    payload = alert_payload({"dag_run": SimpleNamespace(dag_id="gd_nightly", run_id="r1"), "reason": "task_failure"},
                            "run failed", action="see run_report")
    assert payload["task_id"] is None and payload["reason"] == "task_failure"
    assert alert_text(payload).splitlines()[0] == "[gd_provider] run failed: gd_nightly (run r1)"
    assert "action" not in alert_payload({}, "gate failed")  # no advice given: no empty field


def test_a_dag_level_alert_fires_on_the_serialized_dag_the_scheduler_and_dag_test_hand_it(caplog):
    """A DAG-level callback gets the SerializedDAG (no get_template_env): the alert is sent, not lost."""
    from datetime import UTC, datetime

    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import DagSerialization

    with DAG("gd_alert_probe", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=UTC)) as dag:
        pass
    serialized = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    assert not hasattr(serialized, "get_template_env")
    context = {**_context("task run_report failed"), "dag": serialized}
    with caplog.at_level(logging.WARNING):
        LogNotifier("run failed", action="read the run report")(context)
    lines = [r.getMessage() for r in caplog.records if "GD-ALERT" in r.getMessage()]
    assert len(lines) == 1 and '"event": "run failed"' in lines[0]
    assert not [r for r in caplog.records if "Failed to send notification" in r.getMessage()]
