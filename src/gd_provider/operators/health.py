"""Health gate after training: stop the DAG when the gradient-descent telemetry says the run was unhealthy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from gd_provider.operators.gate import GateOperator, plain


class TrainingHealthGate(GateOperator):
    """Judge ``training["health"]`` (the ``RayTrainOperator`` manifest) against ``thresholds``: the built-in
    ``health`` gate (:class:`gd_provider.core.gates.base.HealthGate`) run by :class:`GateOperator`.

    :param training: the training manifest (templated).
    :param thresholds: ``HealthThresholds`` fields (``allow_diverged``, ``max_nonfinite_steps``,
        ``max_clipped_share``, ``require_sensitivity_pass``, ``max_restarts``); omitted fields keep their
        defaults; bad ones fail when the DAG is parsed (when plain) or when rendered.

    Every check is logged; any failure raises ``AirflowFailException`` (no retry) with the failing reasons.
    Returns ``{"ok": True, "reasons": [...], "health": {...}, "thresholds": {...}}``.
    """

    template_fields: Sequence[str] = ("training", "thresholds")  # the thresholds are the gate's options
    ui_color = "#f0e0d2"

    def __init__(self, *, training: Any, thresholds: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if plain(thresholds):
            from gd_provider.core.training.health import HealthThresholds

            try:  # bad thresholds fail when the DAG is parsed
                HealthThresholds.from_value(thresholds)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{kwargs.get('task_id')}: invalid health thresholds: {exc}") from exc
        super().__init__(gate="health", gate_options=thresholds if plain(thresholds) else None, training=training,
                         **kwargs)
        self.thresholds = thresholds

    def execute(self, context: Any) -> dict[str, Any]:
        from gd_provider.core.gates.base import HealthGate
        from gd_provider.core.training.health import HealthThresholds

        try:
            thresholds = HealthThresholds.from_value(self.thresholds)
        except (TypeError, ValueError) as exc:
            raise AirflowFailException(f"invalid health thresholds: {exc}") from exc
        gate = HealthGate(**thresholds.to_dict())
        result = gate.judge(self._inputs(context))
        failed = [r for r in result.reasons if r.startswith("FAIL")]
        self.finish(context, result, "training health gate failed: " + "; ".join(failed))
        training = self.training if isinstance(self.training, dict) else {}
        return {"ok": True, "reasons": result.reasons, "health": training.get("health"),
                "thresholds": thresholds.to_dict()}
