"""Great Expectations validation gate."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from gd_provider.operators._common import interval, run_dir

IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
Expectations = list[dict[str, Any]] | Callable[..., list[dict[str, Any]]] | str


def load_expectations(expectations: Expectations, *, data_interval_end: str | None) -> list[dict[str, Any]]:
    """A list of ``{"type", "kwargs"}`` dicts, a callable returning one (called with
    ``data_interval_end=``), ``"package.module:function"`` naming such a callable (imported here, at run
    time, so parsing the DAG file does not import Great Expectations), or the path of a JSON/YAML file."""
    if isinstance(expectations, str) and IMPORT_PATH.match(expectations):
        import importlib

        module, _, attr = expectations.partition(":")
        try:
            expectations = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise AirflowFailException(f"cannot import the expectations {expectations!r}: {exc}") from exc
    if callable(expectations):
        return list(expectations(data_interval_end=data_interval_end))
    if isinstance(expectations, str):
        text = Path(expectations).read_text()
        if expectations.endswith((".yaml", ".yml")):
            import yaml

            loaded = yaml.safe_load(text)
        else:
            loaded = json.loads(text)
        return list(loaded.get("expectations", loaded) if isinstance(loaded, dict) else loaded)
    return list(expectations)


class DataValidationOperator(BaseOperator):
    """Validate the dataset of ``dataset`` (a manifest) with a Great Expectations suite.

    Fails the task — and so everything downstream — when any expectation fails, listing each failing
    expectation with its observed value. The full result is written as JSON and HTML next to the run's
    other outputs; the returned summary holds their paths.
    """

    template_fields: Sequence[str] = ("dataset",)
    ui_color = "#f5d5c4"

    def __init__(
        self, *, dataset: Any, expectations: Expectations, suite_name: str = "gd_suite", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.dataset = dataset
        self.expectations = expectations
        self.suite_name = suite_name

    def execute(self, context: Any) -> dict[str, Any]:
        from gd_provider.core.data import DatasetError, read_dataset
        from gd_provider.core.quality import validate_dataframe, write_report

        _, end = interval(context)
        try:
            df = read_dataset(self.dataset)
        except DatasetError as exc:
            raise AirflowFailException(f"validation could not read the dataset: {exc}") from exc
        expectations = load_expectations(self.expectations, data_interval_end=end.isoformat())
        report = validate_dataframe(df, expectations, suite_name=self.suite_name)
        paths = write_report(report, str(run_dir(context, "validation")))
        self.log.info("Validation report: %s", paths)
        if not report.success:
            raise AirflowFailException(f"data validation failed for {self.dataset['uri']}\n{report.summary()}")
        self.log.info("All %d expectations passed", report.evaluated)
        return {"success": True, "evaluated": report.evaluated, "report": paths}
