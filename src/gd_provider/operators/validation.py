"""Great Expectations validation gate."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from airflow.providers.standard.operators.branch import BranchMixIn
from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from gd_provider.core.gates.result import GateResult
from gd_provider.links import MlflowRunLink, ValidationReportLink, mlflow_run_url, push_link
from gd_provider.operators._common import interval, push_gate, run_key, task_dir, task_key

IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
Expectations = list[dict[str, Any]] | Callable[..., list[dict[str, Any]]] | str
ON_FAILURE = ("fail", "skip", "branch")
TOLERANCE_KEYS = (
    "null_rate_slack", "range_widening", "row_count_band", "positive_rate_band", "positive_rate_abs", "category_sets",
    "label_mean_shift_std", "range_mostly",
)


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


def _as_list(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


class DataValidationOperator(BaseOperator, BranchMixIn):
    """Validate the dataset of ``dataset`` (a manifest) with a Great Expectations suite.

    The suite is ``expectations`` (a list, ``module:function``, a JSON/YAML file) plus, when asked, checks
    derived at run time:

    * ``feature_service`` (+ ``feast_conn_id``): every feature of the service exists with a dtype of its
      Feast type's family (``meta.gd_check`` = ``schema:...``);
    * ``champion_model_name`` (+ ``champion_alias``, ``mlflow_conn_id``): the champion's training data,
      found through its lineage tags (uri + sha256, verified), is profiled; columns present, dtypes, null
      rates, value ranges, category sets, row count, label classes and positive rate must stay within
      ``tolerances`` (:class:`gd_provider.core.profile.Tolerances`; ``champion_profile:...`` checks).
      ``profile_columns`` limits them (default: every column but the dataset's entity keys and timestamp;
      ``profile_exclude`` drops more). Without a champion (the first run) these checks are skipped and the
      report, the log and the returned manifest say so.
    * ``task`` (+ ``task_options``: what the model predicts, e.g. the config's training spec's): the task's
      label checks (:meth:`gd_provider.core.tasks.Task.label_expectations`: no missing label; binary 0/1,
      multiclass a declared class, regression a numeric dtype) on ``label_column`` (or the manifest's)
      every night (``task:...`` checks), and the champion-derived label checks are the task's
      (:meth:`~gd_provider.core.tasks.Task.profile_label_expectations`; binary without a task).

    On failure (``on_failure``): ``"fail"`` (default) fails the task — and so everything downstream —
    listing each failing expectation with its observed value; ``"skip"`` skips it with the same summary as
    the reason (downstream tasks with the default trigger rule are skipped too); ``"branch"`` follows
    ``branch_on_fail`` (and ``branch_on_pass`` when the data is valid), skipping the other direct
    downstream tasks. The full result is written as JSON and HTML next to the run's other outputs and, when
    ``log_to_mlflow``, logged to an MLflow run of experiment ``experiment_name``; extra links "Validation
    report" and "MLflow run" point at them.

    Time-dependent expectations (e.g. no event after the window end) use the data window end of
    ``_common.data_window_end`` - ``as_of`` (templated) when given, as for the sensor and retrieval.

    Rows the retrieval left out without a trace are judged from its manifest
    (:func:`gd_provider.core.quality.window_findings`): label/entity rows and feature rows stamped after
    the moment of retrieval, label rows without a timestamp. ``dropped_rows``: ``"fail"`` (default) or
    ``"warn"`` (reported, passing). Label rows after the window end that are not in the future (later
    data) are counted in the notes.
    """

    template_fields: Sequence[str] = ("dataset", "as_of", "feast_conn_id", "mlflow_conn_id")
    operator_extra_links = (ValidationReportLink(), MlflowRunLink())
    inherits_from_skipmixin = True
    ui_color = "#f5d5c4"

    def __init__(
        self,
        *,
        dataset: Any,
        expectations: Expectations | None = None,
        suite_name: str = "gd_suite",
        feature_service: str | None = None,
        feast_conn_id: str = "feast_default",
        champion_model_name: str | None = None,
        champion_alias: str = "champion",
        label_column: str | None = None,
        tolerances: dict[str, Any] | None = None,
        profile_columns: Sequence[str] | None = None,
        profile_exclude: Sequence[str] = (),
        on_failure: str = "fail",
        branch_on_pass: str | Iterable[str] | None = None,
        branch_on_fail: str | Iterable[str] | None = None,
        log_to_mlflow: bool = True,
        mlflow_conn_id: str = "mlflow_default",
        experiment_name: str | None = None,
        as_of: str | None = None,
        task: str | None = None,
        task_options: dict[str, Any] | None = None,
        dropped_rows: str = "fail",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if dropped_rows not in ("fail", "warn"):
            raise ValueError(f"{self.task_id}: dropped_rows must be 'fail' or 'warn', got {dropped_rows!r}")
        self.dropped_rows = dropped_rows
        # cheap argument checks only: a bad DAG fails when it is parsed, and nothing is imported or read here
        if on_failure not in ON_FAILURE:
            raise ValueError(f"{self.task_id}: on_failure must be one of {list(ON_FAILURE)}, got {on_failure!r}")
        if on_failure == "branch" and not branch_on_fail:
            raise ValueError(f"{self.task_id}: on_failure='branch' needs branch_on_fail (the task id(s) to follow)")
        if on_failure != "branch" and (branch_on_pass or branch_on_fail):
            raise ValueError(f"{self.task_id}: branch_on_pass/branch_on_fail need on_failure='branch'")
        if expectations is None and not feature_service and not champion_model_name and task is None:
            raise ValueError(f"{self.task_id}: give expectations, feature_service or champion_model_name (or a task, "
                             "whose label checks run)")
        unknown = set(tolerances or {}) - set(TOLERANCE_KEYS)
        if unknown:
            raise ValueError(f"{self.task_id}: unknown tolerances {sorted(unknown)}; known: {list(TOLERANCE_KEYS)}")
        from gd_provider.operators.registry import task_argument

        plugin = task_argument(task, task_options, self.task_id)
        if plugin is not None and tolerances:
            from gd_provider.core.profile import tolerance_problems

            problems = tolerance_problems(plugin, tolerances)
            if problems:
                raise ValueError(f"{self.task_id}: tolerances: " + "; ".join(problems))
        self.task = task
        self.task_options = dict(task_options or {})
        if tolerances and not champion_model_name:
            raise ValueError(f"{self.task_id}: tolerances apply to champion-derived checks: set champion_model_name")
        self.dataset = dataset
        self.expectations = expectations
        self.suite_name = suite_name
        self.feature_service = feature_service
        self.feast_conn_id = feast_conn_id
        self.champion_model_name = champion_model_name
        self.champion_alias = champion_alias
        self.label_column = label_column
        self.tolerances = dict(tolerances or {})
        self.profile_columns = list(profile_columns) if profile_columns is not None else None
        self.profile_exclude = list(profile_exclude)
        self.on_failure = on_failure
        self.branch_on_pass = branch_on_pass
        self.branch_on_fail = branch_on_fail
        self.log_to_mlflow = log_to_mlflow
        self.mlflow_conn_id = mlflow_conn_id
        self.as_of = as_of
        self.experiment_name = experiment_name or champion_model_name or "gd_validation"

    # ------------------------------------------------------------------------------------ derived checks

    def _schema_expectations(self, notes: list[str]) -> list[dict[str, Any]]:
        from gd_provider.core.profile import ProfileError, feature_service_schema, schema_expectations
        from gd_provider.hooks.feast import FeastHook

        try:
            schema = feature_service_schema(FeastHook(self.feast_conn_id).get_conn(), str(self.feature_service))
            exps = schema_expectations(schema)
        except ProfileError as exc:
            raise AirflowFailException(f"validation cannot derive the schema checks: {exc}") from exc
        notes.append(f"{len(exps)} schema checks derived from feature service {self.feature_service!r} "
                     f"({len(schema)} features)")
        return exps

    def _mlflow_client(self) -> tuple[Any, Any]:
        from gd_provider.hooks.mlflow import MlflowHook

        config = MlflowHook(self.mlflow_conn_id).get_config()
        return config, config.client()

    def _champion_expectations(
        self, manifest: dict[str, Any], notes: list[str], run: str | None = None
    ) -> tuple[list[dict], dict]:
        from gd_provider.core import profile as core
        from gd_provider.core.data import DatasetError, read_dataset
        from gd_provider.core.lineage import LineageError, training_dataset
        from gd_provider.core.registry import RegistryError, comparison_champion

        name, alias = str(self.champion_model_name), self.champion_alias
        _, client = self._mlflow_client()
        try:
            # the champion, or - when this run (``run``) already promoted its own model - the one it
            # replaced: this run's data must not be profiled against itself
            champion = comparison_champion(client, name, alias, run)
        except RegistryError as exc:
            raise AirflowFailException(f"validation cannot find the champion to compare with: {exc}") from exc
        if champion is None:
            note = (f"champion-derived checks SKIPPED: {name} has no {alias!r} version yet (first run), so there "
                    "is no training-data profile to compare with")
            self.log.warning(note)
            notes.append(note)
            return [], {"status": "no_champion", "model": name, "alias": alias}
        try:
            ref = training_dataset(client, name, champion)
        except LineageError as exc:
            raise AirflowFailException(f"{exc}: cannot profile its training data") from exc
        try:
            reference = read_dataset(ref)
        except DatasetError as exc:
            raise AirflowFailException(f"validation cannot read the champion's training data: {exc}") from exc
        label = self.label_column or manifest.get("label_column")
        task = self._task()
        try:
            prof = core.profile_dataframe(
                reference, label_column=label if label in reference.columns else None,
                source={"model": name, "version": champion, "uri": ref.uri, "sha256": ref.sha256}, task=task,
            )
            exclude = [*self.profile_exclude]
            if self.profile_columns is None:
                exclude += [*(manifest.get("entity_keys") or []), manifest.get("timestamp_column") or ""]
            columns = self.profile_columns
            exps = core.profile_expectations(prof, core.Tolerances.from_dict(self.tolerances), columns=columns,
                                             exclude=[c for c in exclude if c], task=task)
        except core.ProfileError as exc:
            raise AirflowFailException(f"validation cannot derive the champion checks: {exc}") from exc
        notes.append(f"{len(exps)} checks derived from the training data of {name} v{champion} "
                     f"({prof.rows} rows, {ref.uri})")
        return exps, {"status": "derived", "model": name, "alias": alias, "version": champion,
                      "rows": prof.rows, "uri": ref.uri, "checks": len(exps)}

    def _task(self) -> Any:
        """The task of ``task`` / ``task_options`` (None: none given; the champion checks are then binary)."""
        from gd_provider.operators.registry import task_argument

        try:
            return task_argument(self.task, self.task_options, self.task_id)
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from exc

    def _label_expectations(self, manifest: dict[str, Any], notes: list[str]) -> list[dict[str, Any]]:
        task = self._task()
        if task is None:
            return []
        label = self.label_column or manifest.get("label_column")
        if not label:
            raise AirflowFailException(f"validation of the {task.name} task's labels needs label_column (the "
                                       "dataset manifest names none)")
        exps = list(task.label_expectations(label))
        notes.append(f"{len(exps)} label checks of the {task.name} task on {label!r}")
        return exps

    # ------------------------------------------------------------------------------------------- execute

    def _log_to_mlflow(self, context: Any, report: Any, paths: dict[str, str]) -> dict[str, Any]:
        """Log the report files and numbers into this run's validation MLflow run; never fails the gate."""
        from gd_provider.core.registry import ensure_experiment
        from gd_provider.core.tracking import log_check_run

        try:
            config, client = self._mlflow_client()
            experiment_id = ensure_experiment(client, self.experiment_name, config.artifact_root)
            run_id = log_check_run(
                client, experiment_id, run_key=run_key(context), kind="validation", task=task_key(context, self.task_id),
                metrics={"evaluated": report.evaluated, "failed": report.failed, "success": float(report.success),
                         "rows": report.rows or 0, "elapsed_s": report.elapsed_s},
                tags={"gd.validation.suite": report.suite_name, "gd.validation.success": report.success},
                artifacts=[paths["html"], paths["json"]],
            )
        except Exception as exc:  # tracking down must not change the gate's verdict
            self.log.warning("Could not log the validation report to MLflow (%s): %s", self.mlflow_conn_id, exc)
            return {}
        run_url = mlflow_run_url(config.ui_url, experiment_id, run_id)
        push_link(context, MlflowRunLink, run_url)
        html_name = Path(paths["html"]).name
        return {"mlflow_run_id": run_id, "experiment_id": experiment_id,
                "report_url": f"{run_url}/artifactPath/{html_name}" if run_url else None}

    def execute(self, context: Any) -> Any:
        from gd_provider.core.data import DatasetError, read_dataset
        from gd_provider.core.quality import (
            ValidationConfigError,
            validate_dataframe,
            window_findings,
            write_report,
        )

        _, end = interval(context, as_of=self.as_of, log=self.log)
        try:
            df = read_dataset(self.dataset)
        except DatasetError as exc:
            raise AirflowFailException(f"validation could not read the dataset: {exc}") from exc
        manifest = dict(self.dataset) if isinstance(self.dataset, dict) else {}
        notes: list[str] = []
        expectations = (
            load_expectations(self.expectations, data_interval_end=end.isoformat())
            if self.expectations is not None else []
        )
        champion: dict[str, Any] | None = None
        expectations += self._label_expectations(manifest, notes)
        if self.feature_service:
            expectations += self._schema_expectations(notes)
        if self.champion_model_name:
            derived, champion = self._champion_expectations(manifest, notes, run_key(context))
            expectations += derived
        try:
            report = validate_dataframe(df, expectations, suite_name=self.suite_name)
        except ValidationConfigError as exc:
            raise AirflowFailException(f"the validation suite is invalid: {exc}") from exc
        findings, window_notes = window_findings(manifest, dropped_rows=self.dropped_rows)
        report.add_findings(findings)
        report.notes = [*notes, *window_notes]
        notes = report.notes
        paths = write_report(report, str(task_dir(context, self.task_id)))
        self.log.info("Validation report: %s", paths)
        tracked = self._log_to_mlflow(context, report, paths) if self.log_to_mlflow else {}
        push_link(context, ValidationReportLink, tracked.get("report_url") or f"file://{paths['html']}")
        result = {"success": report.success, "evaluated": report.evaluated, "failed": report.failed,
                  "report": paths, "champion_checks": champion, "notes": notes, **tracked}
        lines = [line.strip() for line in report.summary().splitlines() if line.strip()]
        failures = [f"{line[2:]}: FAIL" for line in lines[1:] if line.startswith("- ")]  # one per failed check
        reasons = [*notes, lines[0], *failures]
        push_gate(context, GateResult(
            "validation", bool(report.success), reasons,
            {"evaluated": report.evaluated, "failed": report.failed, "rows": report.rows or 0},
            {"report": tracked["report_url"]} if tracked.get("report_url") else {}))
        if report.success:
            self.log.info("%s", report.summary())
        else:
            self.log.error("Data validation failed for %s\n%s", manifest.get("uri"), report.summary())
        if self.on_failure == "branch":
            fail_ids = _as_list(self.branch_on_fail)
            if report.success:  # without branch_on_pass: every direct downstream task but the failure branch
                follow = _as_list(self.branch_on_pass) or sorted(set(self.downstream_task_ids) - set(fail_ids))
            else:
                follow = fail_ids
            if self.do_xcom_push:
                # Airflow 3 skips the other branches by raising DownstreamTasksSkipped out of execute, so the
                # return value would never reach XCom: push the manifest first
                context["ti"].xcom_push(key="return_value", value=result)
            self.do_branch(context, follow)
            return result
        if not report.success:
            message = f"data validation failed for {manifest.get('uri')}\n{report.summary()}"
            if self.on_failure == "skip":
                raise AirflowSkipException(message)
            raise AirflowFailException(message)
        return result
