"""The last task of a retraining run: one readable report, and the run's true outcome."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator, TriggerRule
from airflow.sdk.exceptions import AirflowFailException

from gd_provider.operators._common import run_dir

FAILED_STATES = {"failed", "upstream_failed"}


class RunReportOperator(BaseOperator):
    """Collect each task's state and manifest into ``<run dir>/report.json``, log a summary, and fail when
    any task of the run failed.

    It runs whatever happened upstream (trigger rule ``all_done``). Failing here is what makes the DAG run
    itself *failed* when, say, the smoke test failed and the rollback then succeeded: Airflow judges a
    run by its leaf tasks, and a successful rollback must not make a bad night look green.
    """

    ui_color = "#eeeeee"

    def __init__(self, *, task_ids: Sequence[str] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", TriggerRule.ALL_DONE)
        super().__init__(**kwargs)
        self.task_ids = list(task_ids) if task_ids else None

    def execute(self, context: Any) -> dict[str, Any]:
        ti = context["ti"]
        dag_run = context["dag_run"]
        states_by_run = ti.get_task_states(dag_id=dag_run.dag_id, run_ids=[dag_run.run_id])
        states = {k: (str(v) if v is not None else "none") for k, v in states_by_run.get(dag_run.run_id, {}).items()}
        states.pop(self.task_id, None)
        task_ids = self.task_ids or sorted(states)
        outputs, gates = {}, {}
        for task_id in task_ids:
            value = ti.xcom_pull(task_ids=task_id)
            if value is not None:
                outputs[task_id] = value
            gate = ti.xcom_pull(task_ids=task_id, key="gate")  # pushed also by a gate that failed its task
            if gate is not None:
                gates[task_id] = gate
        failed = [t for t in task_ids if states.get(t) in FAILED_STATES]
        report = {
            "dag_id": dag_run.dag_id,
            "run_id": dag_run.run_id,
            "logical_date": dag_run.logical_date.isoformat() if dag_run.logical_date else None,
            "states": {t: states.get(t, "none") for t in task_ids},
            "outputs": outputs,
            "gates": gates,
            "failed": failed,
        }
        path = run_dir(context) / "report.json"
        path.write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
        from gd_provider.core.gates.result import format_results

        lines = [f"  {t:<28} {states.get(t, 'none')}" for t in task_ids]
        self.log.info("Run report (%s):\n%s\nGates:\n%s", path, "\n".join(lines), format_results(list(gates.values())))
        first = [t for t in failed if states.get(t) == "failed"]
        if failed:
            raise AirflowFailException(f"run failed at {', '.join(first or failed)}; report: {path}")
        return {"report": str(path), "states": report["states"],
                "gates": {t: {"gate": g["gate"], "passed": g["passed"], "status": g["status"]} for t, g in gates.items()}}
