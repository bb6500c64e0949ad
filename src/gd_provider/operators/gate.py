"""GateOperator: run any gate (:mod:`gd_provider.core.gates.base`) as a task of its own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

ON_FAILURE = ("fail", "skip")


def plain(value: Any) -> bool:
    """None, or a mapping of plain values: nothing Airflow renders or resolves at run time (checkable at parse)."""
    if value is None:
        return True
    if not isinstance(value, Mapping):
        return False
    for item in value.values():
        if isinstance(item, Mapping) and not plain(item):
            return False
        if isinstance(item, str) and ("{{" in item or "{%" in item):
            return False
        if not isinstance(item, str | int | float | bool | type(None) | Mapping | list | tuple):
            return False
    return True


class GateOperator(BaseOperator):
    """Run the gate ``gate`` on the run's manifests; fail (or skip) the task when it does not pass.

    :param gate: a built-in gate's name (``health``) or your ``Gate`` subclass by import path
        (``my_pkg.gates:MaxNullShare``).
    :param gate_options: the gate's options (templated; checked when the DAG is parsed when plain).
    :param dataset: the dataset manifest (templated, e.g. the retrieval task's output).
    :param training: the training manifest (templated, e.g. the training task's output).
    :param model_name: the registered model the run trains.
    :param on_failure: ``fail`` (default) or ``skip`` the task (and what depends on it) when the gate fails.

    Every reason is logged (FAIL lines at ERROR), the :class:`~gd_provider.core.gates.result.GateResult` is
    pushed as the XCom ``gate`` before the task fails, and returned as a dict. A gate that cannot judge its
    inputs fails the task: a check that did not run is never a pass.
    """

    template_fields: Sequence[str] = ("dataset", "training", "gate_options")
    ui_color = "#f5e6c4"

    def __init__(self, *, gate: str, gate_options: Mapping[str, Any] | str | None = None, dataset: Any = None,
                 training: Any = None, model_name: str | None = None, alias: str = "champion",
                 on_failure: str = "fail", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from gd_provider.core.gates.base import GateError, make_gate

        if on_failure not in ON_FAILURE:
            raise ValueError(f"{self.task_id}: on_failure must be one of {list(ON_FAILURE)}, got {on_failure!r}")
        if plain(gate_options):  # templated options are checked once rendered, in execute
            try:
                make_gate(gate, gate_options if isinstance(gate_options, Mapping) else None)
            except GateError as exc:
                raise ValueError(f"{self.task_id}: {exc}") from exc
        self.gate = gate
        self.gate_options = gate_options
        self.dataset = dataset
        self.training = training
        self.model_name = model_name
        self.alias = alias
        self.on_failure = on_failure

    def _inputs(self, context: Any) -> Any:
        from gd_provider.core.gates.base import GateInputs

        dag_run = context.get("dag_run") if hasattr(context, "get") else None
        run = {"dag_id": getattr(dag_run, "dag_id", None), "run_id": getattr(dag_run, "run_id", None)}
        return GateInputs(dataset=self.dataset if isinstance(self.dataset, Mapping) else None,
                          training=self.training if isinstance(self.training, Mapping) else None,
                          model_name=self.model_name, alias=self.alias, run=run)

    def judge(self, context: Any) -> Any:
        """The gate's :class:`~gd_provider.core.gates.result.GateResult` (a gate that cannot run fails the task)."""
        from gd_provider.core.gates.base import GateError, make_gate

        try:
            gate = make_gate(self.gate, self.gate_options if isinstance(self.gate_options, Mapping) else None)
            return gate.judge(self._inputs(context))
        except GateError as exc:
            raise AirflowFailException(f"gate {self.gate!r} could not judge this run: {exc}") from exc

    def finish(self, context: Any, result: Any, failure_message: str | None = None) -> dict[str, Any]:
        """Log the reasons, push the result (XCom ``gate``), and fail or skip the task when it did not pass."""
        from gd_provider.core.gates.base import failed_reasons
        from gd_provider.operators._common import push_gate

        for reason in result.reasons:
            (self.log.error if reason in failed_reasons(result) else self.log.info)("%s: %s", result.gate, reason)
        data = push_gate(context, result)
        if not result.passed:
            message = failure_message or f"{result.gate} gate failed: " + "; ".join(failed_reasons(result))
            if self.on_failure == "skip":
                raise AirflowSkipException(message)
            raise AirflowFailException(message)
        return data

    def execute(self, context: Any) -> dict[str, Any]:
        return self.finish(context, self.judge(context))
