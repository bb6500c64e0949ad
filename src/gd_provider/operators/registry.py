"""Evaluation gate, registration, promotion, smoke test and rollback against the MLflow registry."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from airflow.sdk import BaseOperator, TriggerRule
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from gd_provider.core.gates.result import GateResult
from gd_provider.links import (
    MlflowModelVersionLink,
    MlflowRunLink,
    mlflow_model_version_url,
    mlflow_run_url,
    push_link,
)
from gd_provider.operators._common import actor, is_set, load_pyfunc, push_gate, run_key, task_key


def _registry_failure(what: str, tracking_uri: str, exc: Exception) -> AirflowException:
    """A clear, retryable error when MLflow cannot be reached or refuses mid-operation."""
    return AirflowException(f"{what} failed talking to MLflow at {tracking_uri}: {type(exc).__name__}: {exc}")


# ------------------------------------------------------------------------------------------ the task
# What is predicted decides every release check (metrics, smoke test, prediction drift, label checks). The
# operators learn it, in this order: the training manifest's spec (what this run trained), an explicit
# ``task`` / ``task_options`` argument (the factory passes the config's training spec), the model's own
# spec (a pyfunc of this package keeps it), else the binary task (what every check meant before tasks).


def task_argument(task: str | None, task_options: dict[str, Any] | None, where: str) -> Any:
    """The :class:`~gd_provider.core.tasks.Task` of an operator's ``task`` / ``task_options`` arguments
    (None when ``task`` is None); a ``ValueError`` naming ``where``, the task and the field otherwise."""
    if task is None:
        if task_options:
            raise ValueError(f"{where}: task_options given without a task")
        return None
    from gd_provider.core.tasks import TaskError, get_task

    try:
        return get_task(task, task_options or {})
    except TaskError as exc:
        raise ValueError(f"{where}: {exc}") from exc


def task_from_training(training: Any) -> Any:
    """The task of a training manifest (its ``spec``, else its ``task`` record); None when it has neither."""
    if not isinstance(training, dict):
        return None
    if training.get("spec"):
        from gd_provider.core.training.spec import TrainingSpec

        return TrainingSpec.from_dict(training["spec"]).task_plugin()
    record = training.get("task")
    if isinstance(record, dict) and record.get("task"):
        from gd_provider.core.tasks import get_task

        return get_task(record["task"], record.get("options") or {})
    return None


def task_of_model(model: Any) -> Any:
    """The task a loaded MLflow pyfunc model knows of itself (a model of this package keeps its training
    spec, or its task); None for any other model."""
    from gd_provider.core.tasks import Task
    from gd_provider.core.training.spec import TrainingSpec

    try:
        inner = model.unwrap_python_model()
    except Exception:
        return None
    for obj in (inner, getattr(inner, "_scorer", None), getattr(inner, "scorer", None)):
        if obj is None:
            continue
        task = getattr(obj, "task", None)
        if isinstance(task, Task):
            return task
        spec = getattr(obj, "spec", None)
        if isinstance(spec, TrainingSpec):
            return spec.task_plugin()
    return None


def decision_rule_of(model: Any, training: dict[str, Any] | None = None, task: Any = None) -> Any:
    """The decision rule a model serves with (its operating point, chosen in training and saved with it; binary:
    a threshold, multiclass: per-class thresholds, regression: a tolerance), as ``task`` decides with it: from
    the training manifest's task state, else from the loaded pyfunc's scorer; None when the model has none
    (then the gate policy's ``decision_threshold`` / the task's default applies)."""
    candidates: list[Any] = [((training or {}).get("task") or {}).get("state")]
    try:
        inner = model.unwrap_python_model()
        scorer = getattr(inner, "_scorer", None) or getattr(inner, "scorer", None)
        candidates.append(getattr(scorer, "state", None) or getattr(scorer, "task_state", None))
    except Exception:  # not one of our models
        pass
    if task is None:
        task = task_of_model(model)
    if task is None:
        from gd_provider.core.tasks import BinaryTask

        task = BinaryTask()
    for state in candidates:
        if isinstance(state, dict) and (rule := task.serving_rule(state)) is not None:
            return rule
    return None


def decision_threshold_of(model: Any, training: dict[str, Any] | None = None) -> float | None:
    """The threshold of a binary model's operating point (None: it has none); see :func:`decision_rule_of`."""
    rule = decision_rule_of(model, training)
    return float(rule) if isinstance(rule, int | float) else None


def model_input(model: Any, frame: Any) -> Any:
    """The columns of ``frame`` the model's signature takes, in its order (no "extra inputs" warnings, no
    label or keys handed to the model); the whole frame when the model has no signature with column names
    or the frame lacks one of them (MLflow then says which)."""
    try:
        schema = model.metadata.get_input_schema()
    except Exception:
        return frame
    if schema is None or not schema.has_input_names():
        return frame
    names = schema.input_names()
    if not set(names) <= set(frame.columns):
        return frame
    return frame[names] if list(frame.columns) != names else frame


def model_scores(model: Any, frame: Any) -> np.ndarray:
    return np.asarray(model.predict(model_input(model, frame)), dtype=float)


class ModelEvaluationGateOperator(BaseOperator):
    """Score the challenger (``training["model_uri"]``) and the current champion on the SAME holdout — the
    latest, time-based slice of this run's dataset, which the challenger never trained on — and decide
    with :class:`gd_provider.core.gate.GatePolicy`. Returns the decision; never fails on a rejection (the
    decision is registered and the promotion skipped with the reason).

    The metrics are the task's (``training["spec"]``: binary, multiclass, regression or a user's task):
    both models' ``predict`` give the task's scores, :meth:`~gd_provider.core.tasks.Task.gate_metrics` turns
    them into metrics, and the policy must name metrics of that task. ``task`` / ``task_options`` (the
    config's training spec, when the factory builds it) let the policy be checked when the DAG is parsed;
    without them it is checked against the binary task then, and always against the trained task at run
    time."""

    template_fields: Sequence[str] = ("dataset", "training", "mlflow_conn_id")
    operator_extra_links = (MlflowRunLink(),)
    ui_color = "#cfe2f3"

    def __init__(
        self,
        *,
        dataset: Any,
        training: Any,
        model_name: str,
        policy: dict[str, Any],
        alias: str = "champion",
        task: str | None = None,
        task_options: dict[str, Any] | None = None,
        mlflow_conn_id: str = "mlflow_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        from gd_provider.core.gate import GateConfigError, GatePolicy

        plugin = task_argument(task, task_options, self.task_id)
        try:  # a bad policy fails when the DAG is parsed (a cheap pure check)
            GatePolicy.from_dict(policy, task=plugin)
        except (GateConfigError, TypeError) as exc:
            about = f" for the {plugin.name} task" if plugin is not None else ""
            raise ValueError(f"{self.task_id}: invalid gate policy{about}: {exc}") from exc
        self.task = task
        self.task_options = dict(task_options or {})
        self.dataset = dataset
        self.training = training
        self.model_name = model_name
        self.policy = policy
        self.alias = alias
        self.mlflow_conn_id = mlflow_conn_id

    def execute(self, context: Any) -> dict[str, Any]:

        from gd_provider.core.gate import GateConfigError, GatePolicy, HoldoutMismatchError, verify_holdout
        from gd_provider.core.gates.release import ReleasePolicyError, decide_release
        from gd_provider.core.registry import RegistryError, comparison_champion, ensure_experiment
        from gd_provider.core.tasks import LabelError
        from gd_provider.core.tracking import log_check_run
        from gd_provider.core.training.runner import holdout_frame, holdout_info
        from gd_provider.core.training.spec import TrainingSpec
        from gd_provider.hooks.mlflow import MlflowHook

        spec = TrainingSpec.from_dict(self.training["spec"])
        task = spec.task_plugin()  # what this run trained (a trigger-time override included)
        try:
            policy = GatePolicy.from_dict(self.policy, task=task)
        except GateConfigError as exc:
            raise AirflowFailException(f"evaluation gate misconfigured for the {task.name} task: {exc}") from exc
        config = MlflowHook(self.mlflow_conn_id).get_config()
        client = config.client()
        holdout = holdout_frame(self.dataset, spec)
        held_out = holdout_info(holdout, spec)  # the digest training records, computed the same way
        try:
            verify_holdout(self.training.get("holdout"), rows=held_out["rows"], sha256=held_out["sha256"])
        except HoldoutMismatchError as exc:
            raise AirflowFailException(f"evaluation gate refuses to decide: {exc}") from exc
        try:
            task.check_labels(holdout[spec.label], spec.label)
        except LabelError as exc:
            raise AirflowFailException(f"evaluation gate refuses to decide: the holdout's labels: {exc}") from exc
        y = task.encode_labels(holdout[spec.label])
        problem = task.holdout_problem(y)
        if problem:
            raise AirflowFailException(f"evaluation gate refuses to decide ({task.name} task, {len(holdout)} "
                                       f"holdout rows): {problem}")
        challenger_model = load_pyfunc(self.training["model_uri"])
        challenger_scores = self._scores(task, "challenger", challenger_model, holdout)
        try:
            # the current champion, or - when this run already promoted its own model (a cleared run) -
            # the champion this run replaced: never the challenger compared with itself
            champion_version = comparison_champion(client, self.model_name, self.alias, run_key(context))
        except RegistryError as exc:
            raise AirflowFailException(f"evaluation gate cannot find its baseline: {exc}") from exc
        champion_scores = champion_threshold = None
        if champion_version is not None:
            champion_model = load_pyfunc(f"models:/{self.model_name}/{champion_version}")
            champion_scores = self._scores(task, f"champion v{champion_version}", champion_model, holdout)
            champion_threshold = decision_rule_of(champion_model, task=task)
        try:
            # each model decides with its own operating point (saved with it; else the policy's threshold)
            decision = decide_release(
                task, policy, y, challenger_scores, champion_scores,
                challenger_threshold=decision_rule_of(challenger_model, self.training, task=task),
                champion_threshold=champion_threshold, champion_version=champion_version, holdout=holdout)
        except (ValueError, ReleasePolicyError) as exc:  # non-finite scores, a wrong shape, a slice column
            raise AirflowFailException(f"evaluation gate cannot decide ({task.name} task): {exc}") from exc
        challenger, champion = decision.challenger_metrics, decision.champion_metrics
        decision.holdout_rows = len(holdout)
        decision.holdout_sha256 = held_out["sha256"]
        self.log.info("Evaluation (%s task) on %d holdout rows: %s", task.name, len(holdout), decision.summary())
        metrics = {f"challenger.{k}": v for k, v in challenger.items()}
        metrics.update({f"champion.{k}": v for k, v in (champion or {}).items()})
        experiment_id = ensure_experiment(client, self.model_name, config.artifact_root)
        run_id = log_check_run(
            client, experiment_id, run_key=run_key(context), kind="evaluation", task=task_key(context, self.task_id),
            metrics=metrics,
            tags={"gd.blessed": str(decision.blessed).lower(), "gd.gate.reason": "; ".join(decision.reasons)[:4000],
                  "gd.gate.baseline_version": champion_version or "none",
                  "gd.gate.holdout_sha256": decision.holdout_sha256, "gd.gate.holdout_rows": len(holdout),
                  "gd.gate.task": task.to_dict()["task"]},
        )
        run_url = mlflow_run_url(config.ui_url, experiment_id, run_id)
        push_link(context, MlflowRunLink, run_url)
        push_gate(context, GateResult("evaluation", decision.blessed, decision.reasons, metrics,
                                      {"mlflow_run": run_url} if run_url else {}))
        return {**decision.to_dict(), "mlflow_run_id": run_id, "task": task.to_dict()["task"]}

    @staticmethod
    def _scores(task: Any, who: str, model: Any, holdout: Any) -> np.ndarray:
        """``model``'s task scores on the holdout (only its input columns are passed)."""
        try:
            return model_scores(model, holdout)
        except ValueError as exc:  # a wrong shape, a missing column: deterministic, retrying will not help
            raise AirflowFailException(f"evaluation gate cannot score the {who} ({task.name} task): {exc}") from exc


class RegisterModelOperator(BaseOperator):
    """Register the trained model once per DAG run and training (a retry or a cleared rerun of the same
    training reuses its version; ``train`` cleared and rerun with other settings registers one new
    version — see :func:`gd_provider.core.registry.register_model`), with lineage tags (DAG run, data interval, dataset digest, feature refs, package version, git sha, seed,
    training run, health) and the gate decision."""

    template_fields: Sequence[str] = ("dataset", "training", "gate", "mlflow_conn_id")
    operator_extra_links = (MlflowModelVersionLink(),)
    ui_color = "#d0e0e3"

    def __init__(
        self,
        *,
        dataset: Any,
        training: Any,
        gate: Any,
        model_name: str,
        drift_task_id: str | None = "drift_check",
        mlflow_conn_id: str = "mlflow_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.drift_task_id = drift_task_id
        self.dataset = dataset
        self.training = training
        self.gate = gate
        self.model_name = model_name
        self.mlflow_conn_id = mlflow_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from gd_provider.core.lineage import TRAINING_FINGERPRINT, lineage_tags
        from gd_provider.core.registry import register_model
        from gd_provider.hooks.mlflow import MlflowHook

        dag_run = context["dag_run"]
        config = MlflowHook(self.mlflow_conn_id).get_config()
        client = config.client()
        tags = lineage_tags(
            dag_id=dag_run.dag_id,
            run_id=dag_run.run_id,
            logical_date=dag_run.logical_date.isoformat() if dag_run.logical_date else None,
            run_after=dag_run.run_after.isoformat() if getattr(dag_run, "run_after", None) else None,
            data_interval=self.dataset.get("data_interval"),
            dataset=self.dataset,
            training=self.training,
            gate=self.gate,
            drift=context["ti"].xcom_pull(task_ids=self.drift_task_id) if self.drift_task_id else None,
            triggered_by=actor(context),
        )
        version, created = register_model(
            client,
            self.model_name,
            self.training["model_uri"],
            run_key=run_key(context),
            run_id=self.training["mlflow_run_id"],
            tags=tags,
            fingerprint=tags[TRAINING_FINGERPRINT],
        )
        self.log.info("%s %s version %s", "Registered" if created else "Reused", self.model_name, version)
        push_link(context, MlflowModelVersionLink, mlflow_model_version_url(config.ui_url, self.model_name, version))
        return {"name": self.model_name, "version": version, "created": created,
                "blessed": bool(self.gate["blessed"])}


class PromoteModelOperator(BaseOperator):
    """Move ``alias`` to the registered version when the gate blessed it; record the previous champion
    on the new version and in the audit trail first. A rejected challenger skips this task (and what
    depends on it) with the gate's reason; the champion is untouched — unless ``force_reason`` (templated,
    from a manual run's Param) is given: then it is promoted and the reason goes into the audit trail and
    the version's tag ``gd.forced_promotion_reason``.

    Compare-and-swap: the alias moves only while the champion is still the one the gate compared the
    challenger with (``gate["champion_version"]``, None = no champion; a champion this same DAG run promoted
    earlier counts as the one it replaced), and never to a version trained on older data than the current
    champion's (:func:`gd_provider.core.registry.promote`). Otherwise the task fails with the reason and
    nothing changes — a rerun of an old night cannot replace a newer champion, a manual rollback between
    evaluate and promote is not undone. ``force_reason`` overrides this too, recorded the same way."""

    template_fields: Sequence[str] = ("model", "gate", "reason", "force_reason", "approval", "mlflow_conn_id")
    operator_extra_links = (MlflowModelVersionLink(),)
    ui_color = "#b6d7a8"

    def __init__(
        self,
        *,
        model: Any,
        gate: Any,
        alias: str = "champion",
        reason: str = "gate blessed the challenger",
        force_reason: str | None = None,
        approval: Any = None,
        mlflow_conn_id: str = "mlflow_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.approval = approval  # a PromotionApprovalOperator's answer: recorded in the audit entry
        self.force_reason = force_reason
        self.model = model
        self.gate = gate
        self.alias = alias
        self.reason = reason
        self.mlflow_conn_id = mlflow_conn_id

    def _approval(self) -> dict[str, Any] | None:
        """The approval this promotion needs, when the DAG asks a person: refuses anything but an approval."""
        if self.approval is None:
            return None
        if not isinstance(self.approval, dict) or self.approval.get("decision") != "approved":
            raise AirflowFailException(f"promotion needs a person's approval, got {self.approval!r}: nothing moved")
        return {k: self.approval.get(k) for k in ("by", "by_id", "at", "comment", "timed_out")}

    def execute(self, context: Any) -> dict[str, Any]:
        from gd_provider.core.registry import RegistryError, promote
        from gd_provider.hooks.mlflow import MlflowHook

        if "champion_version" not in self.gate:
            raise AirflowFailException(
                "the gate decision has no 'champion_version' (the champion it compared with, None for none): "
                "refusing to move the champion without knowing what the challenger was compared with"
            )
        reasons = "; ".join(self.gate["reasons"])
        forced = str(self.force_reason or "").strip()
        reason = f"{self.reason}: {reasons}"
        if not self.gate["blessed"]:
            if not forced:
                raise AirflowSkipException(
                    f"challenger {self.model['name']} v{self.model['version']} not promoted: {reasons}"
                )
            self.log.warning("Gate REJECTED the challenger; promoting anyway by request: %s", forced)
            reason = f"FORCED by request ({forced}) over the gate's rejection: {reasons}"
        approval = self._approval()
        config = MlflowHook(self.mlflow_conn_id).get_config()
        try:
            result = promote(
                config.client(),
                self.model["name"],
                self.model["version"],
                alias=self.alias,
                actor=actor(context),
                reason=reason,
                dag_run=run_key(context),
                # compare-and-swap: only over the champion the gate compared with
                expected_current=self.gate["champion_version"],
                force_reason=forced or None,
                approval=approval,
            )
            if forced and (not self.gate["blessed"] or result.get("overridden")):
                config.client().set_model_version_tag(self.model["name"], self.model["version"],
                                                      "gd.forced_promotion_reason", forced)
        except RegistryError as exc:
            raise AirflowFailException(f"promotion of {self.model['name']} v{self.model['version']} refused: {exc}") from exc
        except Exception as exc:
            raise _registry_failure(
                f"promotion of {self.model['name']} v{self.model['version']} to @{self.alias}", config.tracking_uri, exc
            ) from exc
        push_link(context, MlflowModelVersionLink,
                  mlflow_model_version_url(config.ui_url, result["name"], result["version"]))
        if result.get("completed"):
            self.log.warning("%s@%s was already v%s: this promotion had been interrupted after moving the alias; "
                             "its audit entry (#%s) is written now", result["name"], self.alias, result["version"],
                             result["completed"])
        self.log.info("%s@%s: %s -> %s", result["name"], self.alias, result["previous_champion"], result["version"])
        return result


class ModelSmokeTestOperator(BaseOperator):
    """Post-promotion check of what serving would load: ``models:/<name>@<alias>`` from the registry.

    Scores a canary sample of the run's dataset (the model's input columns only) and fails when the task
    (:meth:`gd_provider.core.tasks.Task.smoke_problems`) finds the scores wrong, or the p95 latency of
    single-row predictions exceeds ``max_p95_latency_ms``. The task's checks, each against its options here:

    * every task: a score is NaN/inf;
    * binary: a score outside [0, 1]; the positive-prediction rate at the model's operating point (its saved
      threshold, else ``decision_threshold``) outside ``positive_rate_bounds``, or differing by more than
      ``max_positive_rate_change`` (absolute) from the rate the evaluation gate measured for this model on the
      holdout (``gate``: the gate's decision, templated) - without a gate, from the previous champion's rate on
      the same canary;
    * multiclass: probabilities outside [0, 1] or not summing to 1; a class's predicted share moving by more
      than ``max_class_share_change`` vs the previous champion;
    * regression: a prediction outside ``prediction_bounds``; the mean prediction moving by more than
      ``max_mean_shift_std`` of the previous champion's standard deviations.

    An option set to something other than its default that the task does not read is refused (when the DAG
    is parsed if the task is known then). The task is the one of ``training`` (the training manifest,
    templated: the factory passes the train task's output), else ``task`` / ``task_options``, else the one
    the model knows of itself, else binary.

    It tests the version this run promoted: ``version`` (templated) when given, else the ``version`` of
    ``promote_task_id``'s XCom (default ``"promote"``; without that XCom, e.g. standalone, whatever the
    alias points at). When the alias no longer points at that version (it was rolled back or replaced
    since, e.g. the smoke test was cleared after a rollback) the task fails and says so: another model's
    smoke test must not turn this run green.
    """

    template_fields: Sequence[str] = ("dataset", "max_p95_latency_ms", "version", "training", "gate", "mlflow_conn_id")
    operator_extra_links = (MlflowModelVersionLink(),)
    ui_color = "#fff2cc"

    def __init__(
        self,
        *,
        dataset: Any,
        model_name: str,
        alias: str = "champion",
        canary_rows: int = 500,
        latency_probes: int = 50,
        max_p95_latency_ms: float | str = 250.0,  # a number, or a template rendering to one
        positive_rate_bounds: tuple[float, float] | None = (0.0, 0.5),
        max_positive_rate_change: float | None = 0.05,
        max_class_share_change: float | None = 0.1,
        prediction_bounds: tuple[float, float] | None = None,
        max_mean_shift_std: float | None = 1.0,
        decision_threshold: float = 0.5,
        seed: int = 0,
        version: str | None = None,
        promote_task_id: str | None = "promote",
        training: Any = None,
        gate: Any = None,
        task: str | None = None,
        task_options: dict[str, Any] | None = None,
        mlflow_conn_id: str = "mlflow_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.gate = gate
        self.version = version
        self.promote_task_id = promote_task_id
        self.dataset = dataset
        self.model_name = model_name
        self.alias = alias
        self.canary_rows = canary_rows
        self.latency_probes = latency_probes
        self.max_p95_latency_ms = max_p95_latency_ms
        self.positive_rate_bounds = positive_rate_bounds
        self.max_positive_rate_change = max_positive_rate_change
        self.max_class_share_change = max_class_share_change
        self.prediction_bounds = prediction_bounds
        self.max_mean_shift_std = max_mean_shift_std
        self.decision_threshold = decision_threshold
        self.seed = seed
        self.training = training
        self.task = task
        self.task_options = dict(task_options or {})
        self.mlflow_conn_id = mlflow_conn_id
        plugin = task_argument(task, task_options, self.task_id)
        if plugin is not None:
            self._check_options(plugin, ValueError)

    @property
    def smoke_options(self) -> dict[str, Any]:
        """The task-dependent options (:data:`gd_provider.core.gate.SMOKE_KEYS`) as the tasks read them."""
        from gd_provider.core.gate import SMOKE_KEYS

        return {key: getattr(self, key) for key in SMOKE_KEYS}

    def _check_options(self, task: Any, error: type[Exception]) -> None:
        from gd_provider.core.gate import smoke_option_problems

        problems = smoke_option_problems(task, self.smoke_options)
        if problems:
            raise error(f"{self.task_id}: smoke-test options for the {task.name} task: " + "; ".join(problems))

    def _task(self, model: Any) -> Any:
        from gd_provider.core.tasks import get_task

        found = task_from_training(self.training)
        found = found or task_argument(self.task, self.task_options, self.task_id) or task_of_model(model)
        if found is None:
            self.log.warning("The task of %s is not known (no training manifest, no task argument, a model that "
                             "does not say): smoke-testing it as a binary model", self.model_name)
            found = get_task("binary")
        return found

    def execute(self, context: Any) -> dict[str, Any]:

        from gd_provider.core.data import read_dataset
        from gd_provider.core.gate import SMOKE_BOUNDS
        from gd_provider.core.registry import NO_CHAMPION, PREVIOUS_CHAMPION_TAG, get_alias_version
        from gd_provider.hooks.mlflow import MlflowHook

        config = MlflowHook(self.mlflow_conn_id).get_config()
        client = config.client()
        expected = self._expected_version(context)
        version = get_alias_version(client, self.model_name, self.alias)
        if version is None:
            raise AirflowFailException(f"{self.model_name} has no {self.alias!r} alias to smoke-test")
        if expected is not None and version != expected:
            raise AirflowFailException(
                f"{self.model_name}@{self.alias} is v{version}, not v{expected} that this run promoted: it was rolled "
                "back or replaced since; not smoke-testing another model in this run's name"
            )
        push_link(context, MlflowModelVersionLink, mlflow_model_version_url(config.ui_url, self.model_name, version))
        model = load_pyfunc(f"models:/{self.model_name}@{self.alias}")
        task = self._task(model)
        self._check_options(task, AirflowFailException)
        own = decision_rule_of(model, self.training, task=task)  # the model's operating point, when it has one
        threshold = self.decision_threshold if own is None else own
        options = self.smoke_options
        expected_rate = ((self.gate or {}).get("challenger_metrics") or {}).get("positive_rate") \
            if isinstance(self.gate, dict) else None
        if expected_rate is not None:
            options["expected_positive_rate"] = float(expected_rate)
        df = read_dataset(self.dataset)
        canary = df.sample(n=min(self.canary_rows, len(df)), random_state=self.seed)
        inputs = model_input(model, canary)
        scores = np.asarray(model.predict(inputs), dtype=float)
        previous = client.get_model_version(self.model_name, version).tags.get(PREVIOUS_CHAMPION_TAG, NO_CHAMPION)
        previous_scores = None
        # the previous champion is scored only for a comparison the task makes with it (a change bound set)
        compares = expected_rate is None and any(
            options.get(k) is not None for k in task.smoke_options if k not in SMOKE_BOUNDS)
        if previous != NO_CHAMPION and compares:
            previous_scores = model_scores(load_pyfunc(f"models:/{self.model_name}/{previous}"), canary)
        problems = [p.replace("the previous champion", f"previous champion v{previous}")
                    for p in task.smoke_problems(scores, previous_scores, options, threshold)]
        latencies = []
        for i in range(self.latency_probes):
            row = inputs.iloc[[i % len(inputs)]]
            t0 = time.perf_counter()
            model.predict(row)
            latencies.append((time.perf_counter() - t0) * 1000)
        p95 = float(np.percentile(latencies, 95))
        budget = float(self.max_p95_latency_ms)
        if p95 > budget:
            problems.append(f"p95 latency {p95:.2f} ms over the {budget} ms budget")
        now = task.smoke_summary(scores, threshold)
        before = task.smoke_summary(previous_scores, threshold) if previous_scores is not None else {}
        summary = {"version": version, "canary_rows": len(canary), "task": task.to_dict()["task"], **now,
                   "decision_threshold": threshold, "gate_positive_rate": expected_rate,
                   "previous_champion": previous, **{f"previous_{k}": before.get(k) for k in now},
                   "p95_latency_ms": p95}
        push_gate(context, GateResult("smoke_test", not problems, [f"{p}: FAIL" for p in problems] or
                                      [f"v{version}: scores, decisions and latency within bounds: pass"],
                                      {k: v for k, v in summary.items() if isinstance(v, int | float)}))
        if problems:
            raise AirflowFailException(
                f"smoke test of {self.model_name}@{self.alias} (v{version}, {task.name} task) failed: "
                + "; ".join(problems)
            )
        self.log.info("Smoke test passed: %s", summary)
        return summary

    def _expected_version(self, context: Any) -> str | None:
        if is_set(self.version):
            return str(self.version).strip()
        if self.promote_task_id:
            promotion = context["ti"].xcom_pull(task_ids=self.promote_task_id)
            if promotion and promotion.get("version") is not None:
                return str(promotion["version"])
        return None


class RollbackModelOperator(BaseOperator):
    """Point the champion alias back at an earlier version, with an audit entry.

    *Automatic* (``promote_task_id`` set, the default ``"promote"``): runs when a post-promotion task fails
    (put it downstream of those checks with trigger rule ``one_failed``, the default here); restores the
    champion recorded by this run's promotion; skips when this run promoted nothing; refuses to undo a
    champion change made by someone else since; fails loudly when there is nothing to restore.

    *Manual* (``promote_task_id=None``): rolls ``model_name``'s alias back to ``to_version`` — a version
    number or ``"previous"`` (the previous champion recorded on the current one) — with ``reason``.
    """

    template_fields: Sequence[str] = ("model_name", "to_version", "reason", "alias", "mlflow_conn_id")
    operator_extra_links = (MlflowModelVersionLink(),)
    ui_color = "#f4cccc"

    def __init__(
        self,
        *,
        promote_task_id: str | None = "promote",
        model_name: str | None = None,
        to_version: str = "previous",
        alias: str = "champion",
        reason: str = "post-promotion check failed",
        mlflow_conn_id: str = "mlflow_default",
        trigger_rule: str | None = None,
        **kwargs: Any,
    ) -> None:
        if trigger_rule is None:
            trigger_rule = TriggerRule.ONE_FAILED if promote_task_id else TriggerRule.ALL_SUCCESS
        super().__init__(trigger_rule=trigger_rule, **kwargs)
        self.promote_task_id = promote_task_id
        self.model_name = model_name
        self.to_version = to_version
        self.alias = alias
        self.reason = reason
        self.mlflow_conn_id = mlflow_conn_id

    def _interrupted_promotion(self, context: Any) -> dict[str, Any] | None:
        """A promotion of this run that moved the alias but failed before it returned (its intent is still
        pending, so it has no XCom): what to undo, as the promotion's XCom would say; None otherwise. Needs
        ``model_name`` (the release stage gives it)."""
        if not self.model_name:
            return None
        from gd_provider.core.registry import get_alias_version, pending_change
        from gd_provider.hooks.mlflow import MlflowHook

        client = MlflowHook(self.mlflow_conn_id).get_config().client()
        intent = pending_change(client, self.model_name, self.alias)
        if not intent or intent.get("action") != "promote" or intent.get("dag_run") != run_key(context):
            return None
        if get_alias_version(client, self.model_name, self.alias) != str(intent.get("to")):
            return None  # the alias never moved (or moved on): nothing of this run's to undo
        self.log.warning("%s@%s: this run's promotion to v%s moved the alias but did not complete; rolling it back "
                         "(the promotion's audit entry is written first)", self.model_name, self.alias, intent["to"])
        return {"name": self.model_name, "alias": self.alias, "version": str(intent["to"]),
                "previous_champion": str(intent.get("from"))}

    def execute(self, context: Any) -> dict[str, Any]:
        from gd_provider.core.registry import NO_CHAMPION, RegistryError, rollback
        from gd_provider.hooks.mlflow import MlflowHook

        expected_current = None
        if self.promote_task_id:
            # Pulled here rather than passed as an XComArg: when the promotion never ran (an earlier gate
            # failed) there is no XCom, and that simply means there is nothing to roll back.
            promotion = context["ti"].xcom_pull(task_ids=self.promote_task_id) or self._interrupted_promotion(context)
            if not promotion:
                raise AirflowSkipException("this run promoted nothing: no rollback needed")
            if promotion["previous_champion"] == NO_CHAMPION:
                raise AirflowFailException(
                    f"{promotion['name']} v{promotion['version']} failed after promotion and there is no "
                    "previous champion to restore: the model has a failing champion, act by hand"
                )
            name, alias, target = promotion["name"], promotion["alias"], promotion["previous_champion"]
            expected_current = promotion["version"]
        else:
            if not self.model_name or not str(self.reason).strip():
                raise AirflowFailException("a manual rollback needs a model name and a reason")
            name, alias, target = self.model_name, self.alias, str(self.to_version).strip() or "previous"
            if target != "previous" and not target.isdigit():
                raise AirflowFailException(f"to_version must be a version number or 'previous', got {target!r}")
        config = MlflowHook(self.mlflow_conn_id).get_config()
        try:
            result = rollback(
                config.client(),
                name,
                alias=alias,
                to_version=target,
                expected_current=expected_current,
                actor=actor(context),
                reason=self.reason,
                dag_run=run_key(context),
            )
        except RegistryError as exc:
            raise AirflowFailException(f"rollback of {name}@{alias} refused: {exc}") from exc
        except Exception as exc:
            raise _registry_failure(f"rollback of {name}@{alias}", config.tracking_uri, exc) from exc
        push_link(context, MlflowModelVersionLink, mlflow_model_version_url(config.ui_url, name, result["to"]))
        if not result.get("moved", True):
            self.log.info("%s@%s already rolled back by this run (audit #%s): v%s -> v%s", name, alias,
                          result["audit_seq"], result["from"], result["to"])
            return result
        self.log.warning("Rolled back %s@%s: v%s -> v%s (%s)", name, alias, result["from"], result["to"], self.reason)
        return result
