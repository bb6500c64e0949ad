"""Health gate after training: stop the DAG when the gradient-descent telemetry says the run was unhealthy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException


class TrainingHealthGate(BaseOperator):
    """Judge ``training["health"]`` (the ``RayTrainOperator`` manifest) against ``thresholds``.

    A thin wrapper over ``gd_provider.core.training.health.assess_health``. ``thresholds`` is a mapping of
    ``HealthThresholds`` fields (``allow_diverged``, ``max_nonfinite_steps``, ``max_clipped_share``,
    ``require_sensitivity_pass``, ``max_restarts``); omitted fields keep their defaults. Every check is logged;
    any failure raises ``AirflowFailException`` (no retry) with the failing reasons. Returns
    ``{"ok": True, "reasons": [...], "health": {...}}``.
    """

    template_fields: Sequence[str] = ("training", "thresholds")
    ui_color = "#f0e0d2"

    def __init__(self, *, training: Any, thresholds: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if _plain(thresholds):  # templated values (Jinja, XComArg) are checked once rendered, in execute
            from gd_provider.core.training.health import HealthThresholds

            try:  # bad thresholds fail when the DAG is parsed
                HealthThresholds.from_value(thresholds)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{self.task_id}: invalid health thresholds: {exc}") from exc
        self.training = training
        self.thresholds = thresholds

    def execute(self, context: Any) -> dict[str, Any]:
        from gd_provider.core.training.health import HealthThresholds, assess_health

        try:
            thresholds = HealthThresholds.from_value(self.thresholds)
        except (TypeError, ValueError) as exc:
            raise AirflowFailException(f"invalid health thresholds: {exc}") from exc
        training = self.training if isinstance(self.training, dict) else {}
        health = training.get("health")
        ok, reasons = assess_health(health, thresholds)
        for reason in reasons:
            self.log.info("health: %s", reason)
        from gd_provider.core.gates.result import GateResult
        from gd_provider.operators._common import push_gate

        numbers = {k: v for k, v in (health or {}).items() if isinstance(v, int | float) and not isinstance(v, bool)}
        push_gate(context, GateResult("health", ok, reasons, numbers))
        if not ok:
            failed = [r for r in reasons if r.startswith("FAIL")]
            raise AirflowFailException("training health gate failed: " + "; ".join(failed))
        return {"ok": True, "reasons": reasons, "health": health, "thresholds": thresholds.to_dict()}


def _plain(value: Any) -> bool:
    """None, or a mapping of plain values: nothing that Airflow renders or resolves at run time."""
    if value is None:
        return True
    if not isinstance(value, dict):
        return False
    for item in value.values():
        if isinstance(item, dict) and not _plain(item):
            return False
        if isinstance(item, str) and ("{{" in item or "{%" in item):
            return False
        if not isinstance(item, (str, int, float, bool, type(None), dict)):
            return False
    return True
