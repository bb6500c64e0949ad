"""One result shape for every gate, pushed by the gate operators (also when they fail) and printed alike."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException

from gd_provider.core.gates.result import GateResult, format_results
from gd_provider.operators.health import TrainingHealthGate

from ..support import FakeTI, fake_context


def test_results_print_in_pipeline_order_with_their_reasons():
    text = format_results([
        GateResult("evaluation", False, ["fpr 0.0250 vs champion v1 0.0200: FAIL"], links={"mlflow_run": "http://m/1"}),
        {"gate": "validation", "passed": True, "reasons": ["12 expectations passed"], "metrics": {}, "links": {},
         "status": "decided"},
        GateResult("drift", True, ["no champion yet"], status="not_applicable"),
    ])
    assert text.splitlines() == [
        "validation: PASSED", "  - 12 expectations passed",
        "drift: NOT APPLICABLE", "  - no champion yet",
        "evaluation: FAILED", "  - fpr 0.0250 vs champion v1 0.0200: FAIL", "  mlflow_run: http://m/1",
    ]


def test_a_failing_gate_pushes_its_result_before_it_fails_the_task():
    ti = FakeTI(task_id="health_gate")
    context = {**fake_context(ti=ti), "ti": ti}
    training = {"health": {"status": "diverged", "nonfinite_steps": 3, "steps": 10, "clipped_share": 0.0}}
    with pytest.raises(AirflowFailException):
        TrainingHealthGate(task_id="health_gate", training=training).execute(context)
    pushed = ti.xcom_pull("health_gate", key="gate")
    assert pushed["gate"] == "health" and pushed["passed"] is False
    assert any(r.startswith("FAIL") for r in pushed["reasons"]) and pushed["metrics"]["nonfinite_steps"] == 3
