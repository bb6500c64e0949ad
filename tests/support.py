"""Helpers for operator tests: a minimal task context and small registered models."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import mlflow
import numpy as np
import pandas as pd


class FakeTI:
    """Just enough of a task instance for our operators: XCom push/pull kept in a dict."""

    def __init__(self, xcoms: dict[tuple[str, str], Any] | None = None, task_id: str = "task") -> None:
        self.xcoms = dict(xcoms or {})
        self.task_id = task_id

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[(self.task_id, key)] = value

    def xcom_pull(self, task_ids: str, key: str = "return_value", default: Any = None) -> Any:
        return self.xcoms.get((task_ids, key), default)


def fake_context(run_id: str = "manual__test", dag_id: str = "test_dag", *, ti: FakeTI | None = None,
                 user: str | None = "tester", end: datetime | None = None) -> dict[str, Any]:
    end = end or datetime(2026, 2, 1, tzinfo=UTC)
    dag_run = SimpleNamespace(dag_id=dag_id, run_id=run_id, logical_date=end, data_interval_start=end,
                              data_interval_end=end, run_after=end, triggering_user_name=user, run_type="manual")
    return {"dag_run": dag_run, "ti": ti or FakeTI(), "params": {}}


class AmountScorer(mlflow.pyfunc.PythonModel):
    """A stand-in fraud model: the score rises with the amount (scale set at construction)."""

    def __init__(self, scale: float = 100.0) -> None:
        self.scale = scale

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(model_input["amount"].to_numpy(dtype=float) - 3 * self.scale) / self.scale))


def register_scorer(client, experiment_id: str, name: str, run_key: str, tags: dict[str, str],
                    scale: float = 100.0) -> str:
    from gd_provider.core.registry import register_model

    with mlflow.start_run(experiment_id=experiment_id) as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=AmountScorer(scale), pip_requirements=["mlflow"])
    version, _ = register_model(client, name, info.model_uri, run_key=run_key, run_id=run.info.run_id, tags=tags)
    return version
