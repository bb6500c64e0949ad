"""Ray Train training of the challenger, tracked in MLflow - inside the task or as a job on a Ray cluster."""

from __future__ import annotations

import hashlib
import json
import shlex
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from gd_provider.links import MlflowRunLink, RayJobLink, mlflow_run_url, push_link, ray_job_url
from gd_provider.operators._common import run_dir, run_key, safe_name, task_key

ENTRYPOINT_MODULE = "gd_provider.core.training.entrypoint"
JOBS_SUBDIR = "ray_jobs"
REQUEST_SETTINGS_KEY = "airflow_settings"  # in a job's request JSON: the overrides it was submitted with
# Set for the job's driver and every Ray worker of the job (runtime_env.env_vars); the connection's and
# the operator's runtime_env win over these.
DEFAULT_JOB_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    "PYTHONUNBUFFERED": "1",
}
MAX_ATTEMPTS = 50  # resubmissions of one task's job (-r2 ... -r50) before giving up
LOG_TAIL_LINES = 40
ON_KILL_WAIT_S = 4.0  # on_kill waits this long for a stopped job to leave RUNNING
STOPPING_WAIT_S = 60.0  # a new try waits this long for a job an earlier try is stopping, before resubmitting
_ACTIVE = ("PENDING", "RUNNING")


def ray_submission_id(dag_id: str, run_id: str, task_id: str, map_index: int | None = -1) -> str:
    """Deterministic Ray job submission id of one task instance, the same for every try: ``gd-<hash>``.

    A retry finds the job an earlier try submitted under this id (and ``<id>-r2``, ``-r3``... for
    resubmissions after a FAILED/STOPPED job) instead of starting a second one.
    """
    key = json.dumps([dag_id, run_id, task_id, -1 if map_index is None else int(map_index)])
    return "gd-" + hashlib.sha256(key.encode()).hexdigest()[:24]


def attempt_id(base: str, attempt: int) -> str:
    return base if attempt <= 1 else f"{base}-r{attempt}"


def _status_name(status: Any) -> str:
    return str(getattr(status, "value", status))


def _is_not_found(exc: Exception) -> bool:
    text = str(exc)
    return "status code 404" in text or "does not exist" in text


class RayTrainOperator(BaseOperator):
    """Train ``spec`` (a TrainingSpec as dict) on the dataset manifest with Ray Train's TorchTrainer,
    then log params, per-epoch and per-step telemetry, curves and the model to MLflow.

    ``spec_overrides`` (templated; e.g. ``{{ params.training_overrides }}`` with native rendering) lets a
    manual run change the learning rate or epochs; the spec is validated before Ray starts.
    Returns the training manifest ``{mlflow_run_id, model_uri, metrics, health, spec, ...}``; ``health``
    is what ``TrainingHealthGate`` judges.

    When the gradient-descent guards stop the run (``status="diverged"``), the MLflow run is still logged
    with the telemetry up to the stop and tagged ``gd.health.status=diverged``, but no model is logged, and
    the task fails with ``AirflowFailException`` (no retry) naming the reason - so nothing gets registered.

    **Where it trains** follows the Ray connection (``ray_conn_id``): ``local`` (or no ``ray_default``
    connection) trains inside the task; a Jobs API address submits the training as a Ray job running
    ``python -m gd_provider.core.training.entrypoint`` on the cluster:

    * the request (dataset manifest, spec, storage path, run name, result path) is written as JSON under
      ``<home>/runs/<dag>/<run>/ray_jobs/`` and the result comes back as JSON next to it, so the project
      home (datasets, runs) must be on storage that the cluster's nodes see at the same path;
    * the submission id is deterministic (``ray_submission_id``: dag_id, run_id, task_id, map_index; not
      the try number): a retry adopts the job of an earlier try - waits for it when PENDING/RUNNING, uses
      its result when SUCCEEDED - and resubmits as ``<id>-r2``, ``-r3``... only after FAILED/STOPPED
      (resuming from the run's latest checkpoint, as in-process training does);
    * the cluster must be able to import ``gd_provider`` (installed in its image), or give a
      ``runtime_env`` (``working_dir``/``py_modules``/``pip``) in the connection's extra or here; a user's
      model factory / task class (``training.model`` / ``training.task`` import paths) is found through the
      request's ``python_paths`` (its module roots here: the DAGs folder, a package) when those are on the
      shared volume too, else it must be installed in the image or shipped with the ``runtime_env``;
    * waiting: polls the job's status and copies its new log lines into the task log every
      ``poll_interval`` seconds; ``on_kill`` stops the job; ``job_timeout`` (seconds, per try) stops it
      and fails the try. With ``deferrable=True`` the wait happens in the triggerer (``RayJobTrigger``),
      which stops the job if the deferred task is killed;
    * the MLflow run is logged from the Airflow side exactly as for local training; an input error
      reported by the job (bad spec, missing dataset or columns) fails without retry, with the tail of the
      job's log; a job that crashed or was stopped fails the try (a retry resubmits it).
    """

    template_fields: Sequence[str] = ("dataset", "spec_overrides")
    ui_color = "#d9d2f0"
    operator_extra_links = (MlflowRunLink(), RayJobLink())

    def __init__(
        self,
        *,
        dataset: Any,
        spec: dict[str, Any],
        model_name: str,
        spec_overrides: dict[str, Any] | None = None,
        rerun_variable: str | None = None,
        experiment_name: str | None = None,
        ray_conn_id: str = "ray_default",
        mlflow_conn_id: str = "mlflow_default",
        deferrable: bool = False,
        poll_interval: float = 10.0,
        job_timeout: float | None = None,
        runtime_env: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        from gd_provider.core.training.spec import SpecError, TrainingSpec

        try:  # a bad spec fails when the DAG is parsed (a cheap pure check), naming the field
            TrainingSpec.from_dict(spec.to_dict() if isinstance(spec, TrainingSpec) else spec)
        except SpecError as exc:
            raise ValueError(f"{self.task_id}: invalid training spec: {exc}") from exc
        self.dataset = dataset
        self.spec = spec.to_dict() if isinstance(spec, TrainingSpec) else spec
        self.spec_overrides = spec_overrides
        self.rerun_variable = rerun_variable
        self._overrides: tuple[dict[str, Any], dict[str, Any] | None] | None = None
        self.model_name = model_name
        self.experiment_name = experiment_name
        self.ray_conn_id = ray_conn_id
        self.mlflow_conn_id = mlflow_conn_id
        self.deferrable = deferrable
        self.poll_interval = float(poll_interval)
        self.job_timeout = job_timeout
        self.runtime_env = runtime_env
        self._job_client: Any = None
        self._submission_id: str | None = None
        self._jobs_dir_path: Path | None = None
        self._training_locally = False
        self._killed = False

    # ------------------------------------------------------------------------------------------- shared
    def _effective_overrides(self, context: Any = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """``(overrides, rerun override record or None)``: the ``spec_overrides`` Param, updated by the rerun
        override in the Variable ``rerun_variable`` when it names this DAG run (``core.rerun``). Read once
        per try, so training and what is recorded agree."""
        if self._overrides is not None:
            return self._overrides
        from gd_provider.core.rerun import RerunOverrideError, resolve_training_overrides

        value = None
        if self.rerun_variable and context is not None:
            from airflow.sdk import Variable

            value = Variable.get(self.rerun_variable, default=None)
        run_id = context["dag_run"].run_id if context is not None else ""
        try:
            overrides, rerun, note = resolve_training_overrides(
                self.spec_overrides, value, variable=self.rerun_variable or "", run_id=run_id
            )
        except RerunOverrideError as exc:
            raise AirflowFailException(f"invalid training overrides: {exc}") from exc
        if note:
            self.log.info("%s", note)
        if rerun is not None:
            self.log.warning("Rerun override from Variable %r applied (%s): %s -> training overrides %s",
                             rerun.variable, rerun.reason, rerun.training_overrides, overrides)
        elif context is not None and self.rerun_variable:
            self._warn_about_the_dag_variable(context, run_id)
        self._overrides = (overrides, rerun.to_dict() if rerun else None)
        return self._overrides

    def _warn_about_the_dag_variable(self, context: Any, run_id: str) -> None:
        """A training task with its own rerun Variable (one model of several in a DAG) ignores the DAG's
        ``gd_rerun.<dag_id>``; an override there naming this run was meant for some training task, maybe
        this one (it was the only key before per-task Variables): say so rather than ignore it silently."""
        from gd_provider.core.rerun import RerunOverrideError, parse_rerun_override, rerun_variable_key

        dag_key = rerun_variable_key(context["dag_run"].dag_id)
        if dag_key == self.rerun_variable:
            return
        from airflow.sdk import Variable

        try:
            other = parse_rerun_override(Variable.get(dag_key, default=None), variable=dag_key)
        except RerunOverrideError:  # not this task's Variable: its validity is not this task's business
            return
        if other is not None and other.run_id == run_id:
            self.log.warning("Variable %r holds a rerun override for this run, but this task (%s) reads its own "
                             "Variable %r: the override there is NOT applied here; move it to %r to retrain "
                             "this model", dag_key, self.task_id, self.rerun_variable, self.rerun_variable)

    def _run_name(self, context: Any, spec: Any) -> str:
        """Ray Train run name (checkpoints): per task of a DAG run, so a retry resumes it and two training
        tasks of one run (two models, a mapped task) never resume each other's checkpoints. A rerun override
        trains other settings, which must not resume the earlier training: it gets its own name per spec."""
        name = f"{task_key(context, self.task_id)}-{run_key(context)}"
        if self._effective_overrides(context)[1] is not None:
            digest = hashlib.sha256(json.dumps([spec.to_dict(), self._dataset_dict().get("sha256")], sort_keys=True,
                                               default=str).encode()).hexdigest()[:10]
            name += f"-rerun-{digest}"
        return safe_name(name)

    def _resolve_spec(self, context: Any = None):
        from gd_provider.core.training.spec import SpecError, TrainingSpec

        overrides, rerun = self._effective_overrides(context)
        try:
            spec = TrainingSpec.from_dict(self.spec)
            if overrides:
                spec = spec.with_overrides(overrides)
            spec.validate()
        except SpecError as exc:
            origin = f" (rerun override from Variable {rerun['variable']!r})" if rerun else ""
            raise AirflowFailException(f"invalid training spec{origin}: {exc}") from exc
        return spec

    def _experiment(self) -> tuple[Any, str]:
        from gd_provider.core.registry import ensure_experiment
        from gd_provider.hooks.mlflow import MlflowHook

        mlflow_config = MlflowHook(self.mlflow_conn_id).get_config()
        client = mlflow_config.client()
        experiment_id = ensure_experiment(client, self.experiment_name or self.model_name, mlflow_config.artifact_root)
        return mlflow_config, experiment_id

    def _dataset_dict(self) -> dict[str, Any]:
        dataset = self.dataset
        if hasattr(dataset, "to_dict"):
            dataset = dataset.to_dict()
        if not isinstance(dataset, dict):
            raise AirflowFailException(f"dataset must be a dataset manifest (mapping), got {type(dataset).__name__}")
        return dataset

    def _logged_before(self, record: Path, mlflow_config: Any, tags: dict[str, str]) -> dict[str, Any] | None:
        """What an earlier try logged for this very result (same job, same DAG run), if that MLflow run is
        still there; ``None`` otherwise (then the result is logged now)."""
        try:
            saved = json.loads(record.read_text())
            logged, saved_tags = saved["logged"], saved["tags"]
            run_id = logged["mlflow_run_id"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.log.warning("Ignoring unreadable MLflow record %s (%s): logging the result again", record, exc)
            return None
        if saved_tags != tags:
            self.log.warning("MLflow record %s belongs to %s, not %s: logging the result again", record, saved_tags, tags)
            return None
        try:
            run = mlflow_config.client().get_run(run_id)
        except Exception as exc:  # MlflowException (deleted for good / another server)
            self.log.warning("MLflow run %s of an earlier try is gone (%s): logging the result again", run_id, exc)
            return None
        if run.info.lifecycle_stage != "active" or run.info.status != "FINISHED":
            self.log.warning(
                "MLflow run %s of an earlier try is %s/%s: logging the result again",
                run_id, run.info.lifecycle_stage, run.info.status,
            )
            return None
        self.log.info("Reusing MLflow run %s, logged for this job's result by an earlier try", run_id)
        return logged

    def _supersede_orphans(self, mlflow_config: Any, experiment_id: str, tags: dict[str, str], run_id: str) -> None:
        """Runs logged for the same job by a try that died before recording them: mark them superseded."""
        submission_id = tags.get("gd.ray.submission_id")
        if not submission_id:
            return
        try:
            client = mlflow_config.client()
            others = client.search_runs(
                [experiment_id],
                filter_string=f"tags.`gd.ray.submission_id` = '{submission_id}' and tags.`gd.run_key` = '{tags['gd.run_key']}'",
            )
            for other in others:
                if other.info.run_id == run_id or "gd.superseded_by" in other.data.tags:
                    continue
                client.set_tag(other.info.run_id, "gd.superseded_by", run_id)
                if other.info.status == "RUNNING":
                    client.set_terminated(other.info.run_id, status="KILLED")
                self.log.warning("MLflow run %s of an interrupted try is superseded by %s", other.info.run_id, run_id)
        except Exception as exc:  # best effort: the new run and its record are what counts
            self.log.warning("Could not look for superseded MLflow runs of job %s: %s", submission_id, exc)

    def execute(self, context: Any) -> dict[str, Any]:
        from gd_provider.hooks.ray import RayHook

        self._overrides = None  # read the rerun override afresh for this try
        spec = self._resolve_spec(context)
        cluster = RayHook(self.ray_conn_id).cluster_config()
        mlflow_config, experiment_id = self._experiment()
        if cluster is None:
            result = self._train_locally(context, spec)
            return self._finish(context, spec, result, self._dataset_dict(), mlflow_config, experiment_id)
        return self._train_remotely(context, spec, cluster, mlflow_config, experiment_id)

    def _finish(
        self,
        context: Any,
        spec: Any,
        result: Any,
        dataset: dict[str, Any],
        mlflow_config: Any,
        experiment_id: str,
        *,
        tags: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
        logged_record: Path | None = None,
    ) -> dict[str, Any]:
        """Judge a TrainingResult and log it to MLflow - the same for local and remote training.

        ``logged_record`` (remote training: one per Ray job) is where what was logged for this result is
        kept: a later try that adopts the same finished job reuses that MLflow run instead of logging a
        second one for the same training.
        """
        from gd_provider.core.training.pyfunc import log_training_run

        if result.sensitivity:
            self.log.info("Learning-rate sensitivity check %s: %s", result.sensitivity["status"], result.sensitivity["reason"])
        if result.status not in ("completed", "diverged"):
            raise AirflowFailException(f"training did not complete ({result.status}): {result.error}")
        from gd_provider.core.rerun import rerun_tags

        dag_run = context["dag_run"]
        key = run_key(context)
        overrides, rerun = self._effective_overrides(context)
        recorded = {"spec_overrides": overrides, "param_overrides": dict(self.spec_overrides or {}), "rerun": rerun}
        all_tags = {"gd.dag_id": dag_run.dag_id, "gd.airflow_run_id": dag_run.run_id, "gd.run_key": key,
                    **{k: v if isinstance(v, str) else json.dumps(v, sort_keys=True)
                       for k, v in rerun_tags(recorded).items()},
                    **(tags or {})}
        logged = self._logged_before(logged_record, mlflow_config, all_tags) if logged_record else None
        if logged is None:
            logged = log_training_run(
                result,
                spec,
                dataset,
                experiment_id=experiment_id,
                run_name=f"{dag_run.dag_id}:{dag_run.run_id}",
                tags=all_tags,
            )
            if logged_record is not None:
                from gd_provider.core.training.entrypoint import write_json_atomic

                write_json_atomic(logged_record, {"tags": all_tags, "logged": logged})
                self._supersede_orphans(mlflow_config, experiment_id, all_tags, logged["mlflow_run_id"])
        push_link(context, MlflowRunLink, mlflow_run_url(mlflow_config.ui_url, experiment_id, logged["mlflow_run_id"]))
        if result.status == "diverged":
            guard = result.guard
            raise AirflowFailException(
                f"training diverged at step {guard.get('step')} (epoch {guard.get('epoch')}, batch "
                f"{guard.get('batch')}, rank {guard.get('rank')}): {guard.get('reason')}. Nothing was "
                f"registered; telemetry is in MLflow run {logged['mlflow_run_id']} (gd.health.status=diverged)"
            )
        self.log.info("Training finished: %s, MLflow run %s", logged["metrics"], logged["mlflow_run_id"])
        self.log.info("Training health: %s", logged["health"])
        # task (task.json) and model (factory, kwargs, code version): what lineage_tags records on the version
        what = {"task": result.task or logged.get("task") or {}, "model": result.model or logged.get("model") or {}}
        return {**logged, "spec": spec.to_dict(), **recorded, "holdout": result.holdout, **what, **(extra or {})}

    # -------------------------------------------------------------------------------------------- local
    def _train_locally(self, context: Any, spec: Any) -> Any:
        from gd_provider.core.training import runner
        from gd_provider.core.training.spec import SpecError

        self._training_locally = True
        try:
            return runner.run_training(
                self.dataset,
                spec,
                storage_path=str(run_dir(context, "ray")),
                run_name=self._run_name(context, spec),
                ray_address="local",
            )
        except (SpecError, runner.TrainingInputError) as exc:
            # Checked before Ray starts (columns, labels, device/precision): retrying cannot help.
            raise AirflowFailException(f"cannot train: {exc}") from exc
        except KeyboardInterrupt as exc:
            if not self._killed:
                raise
            # on_kill's interrupt, after Ray Train stopped and run_training shut the local Ray instance down.
            # Retryable on purpose: a SIGTERM is also a worker or pod shutting down, and the task's retries
            # must apply (after a user's clear, Airflow has already set the state).
            raise AirflowException("killed while training in-task (local Ray): training stopped") from exc
        finally:
            self._training_locally = False

    # ------------------------------------------------------------------------------------------- remote
    def _base_submission_id(self, context: Any) -> str:
        dag_run = context["dag_run"]
        ti = context.get("ti") if hasattr(context, "get") else None
        return ray_submission_id(dag_run.dag_id, dag_run.run_id, self.task_id, getattr(ti, "map_index", -1))

    @staticmethod
    def _jobs_dir(context: Any) -> Path:
        return run_dir(context, JOBS_SUBDIR)

    @staticmethod
    def _request_path(jobs_dir: Path, submission_id: str) -> Path:
        return jobs_dir / f"{submission_id}.request.json"

    @staticmethod
    def _stop_marker(jobs_dir: Path, submission_id: str) -> Path:
        """Written before any stop request (on_kill, the trigger's on_kill, a job timeout): a later try never
        adopts a job that some try is stopping, however late the stop lands on the cluster."""
        return jobs_dir / f"{submission_id}.stop_requested"

    def _wait_for_stopping_job(self, client: Any, submission_id: str, status: str) -> str:
        """The status of a job that an earlier try asked to stop, once it has ended (bounded wait)."""
        self.log.info("Ray job %s is %s but an earlier try asked to stop it: waiting for it to end, then "
                      "resubmitting", submission_id, status)
        deadline = time.monotonic() + STOPPING_WAIT_S
        while status in _ACTIVE and time.monotonic() < deadline:
            time.sleep(min(1.0, self.poll_interval))
            status = _status_name(client.get_job_status(submission_id))
        if status in _ACTIVE:
            self._stop(client, submission_id)
            raise AirflowException(
                f"Ray job {submission_id} is still {status} {STOPPING_WAIT_S:.0f} s after an earlier try asked to "
                "stop it: not adopting it; a retry resubmits once it has ended"
            )
        return status

    def _runtime_env(self, cluster: Any) -> dict[str, Any]:
        runtime_env: dict[str, Any] = {}
        env_vars = dict(DEFAULT_JOB_ENV)
        for layer in (cluster.runtime_env, self.runtime_env or {}):
            layer = dict(layer)
            env_vars.update({str(k): str(v) for k, v in (layer.pop("env_vars", None) or {}).items()})
            runtime_env.update(layer)
        runtime_env["env_vars"] = env_vars
        return runtime_env

    def _job_info(self, client: Any, submission_id: str) -> Any:
        try:
            return client.get_job_info(submission_id)
        except RuntimeError as exc:
            if _is_not_found(exc):
                return None
            raise AirflowException(f"Ray Jobs API error for job {submission_id}: {exc}") from exc

    def _same_training(self, jobs_dir: Path, submission_id: str, spec: Any) -> bool:
        """Whether the job ``submission_id`` was submitted for this spec and dataset (its request file)."""
        try:
            request = json.loads(self._request_path(jobs_dir, submission_id).read_text())
        except (OSError, ValueError):
            return True  # no request to compare with: keep the adopt-on-retry behaviour
        same_spec = request.get("spec") == json.loads(json.dumps(spec.to_dict()))
        return same_spec and (request.get("dataset") or {}).get("sha256") == self._dataset_dict().get("sha256")

    def _adopt_or_submit(
        self, context: Any, client: Any, spec: Any, cluster: Any, jobs_dir: Path
    ) -> tuple[str, str]:
        """(submission id, status) of this task's job: an earlier try's, or a new submission."""
        from gd_provider.core.training.entrypoint import build_request, write_json_atomic
        from gd_provider.core.training.runner import user_python_paths

        base = self._base_submission_id(context)
        previous: tuple[str, Any] | None = None
        attempt = 1
        while attempt <= MAX_ATTEMPTS:
            info = self._job_info(client, attempt_id(base, attempt))
            if info is None:
                break
            previous = (attempt_id(base, attempt), info)
            attempt += 1
        if previous is not None:
            prev_id, prev = previous
            status = _status_name(prev.status)
            if (status in _ACTIVE or status == "SUCCEEDED") and not self._same_training(jobs_dir, prev_id, spec):
                # A cleared task rerun with other settings (a rerun override) must not adopt the old job.
                self.log.warning("Ray job %s (%s) trained other settings or data than this try: not adopting it",
                                 prev_id, status)
                if status in _ACTIVE:
                    self._stop(client, prev_id)
                status = "SUPERSEDED"
            if status in _ACTIVE and self._stop_marker(jobs_dir, prev_id).exists():
                status = self._wait_for_stopping_job(client, prev_id, status)
            if status in _ACTIVE:
                self.log.info("Adopting Ray job %s (%s), submitted by an earlier try of this task", prev_id, status)
                return prev_id, status
            if status == "SUCCEEDED":
                self.log.info("Ray job %s of an earlier try already SUCCEEDED: using its result", prev_id)
                return prev_id, status
            if attempt > MAX_ATTEMPTS:
                raise AirflowFailException(f"Ray job {base} was already submitted {MAX_ATTEMPTS} times; giving up")
            self.log.warning(
                "Ray job %s of an earlier try ended %s (%s); resubmitting as %s",
                prev_id, status, (prev.message or "").splitlines()[0] if prev.message else "no message",
                attempt_id(base, attempt),
            )
        submission_id = attempt_id(base, attempt)
        dag_run = context["dag_run"]
        request_path = self._request_path(jobs_dir, submission_id)
        request = build_request(
            self._dataset_dict(),
            spec.to_dict(),
            storage_path=str(run_dir(context, "ray")),
            run_name=self._run_name(context, spec),
            result_path=str(jobs_dir / f"{submission_id}.result.json"),
            submission_id=submission_id,
            python_paths=user_python_paths(spec),
        )
        # What this try resolved (Param + rerun Variable): whoever collects the job - this try, a deferred
        # resume, a later try adopting it - records these, not whatever the Variable says by then.
        overrides, rerun = self._effective_overrides(context)
        request[REQUEST_SETTINGS_KEY] = {"spec_overrides": overrides, "rerun": rerun}
        write_json_atomic(request_path, request)
        entrypoint = f"{cluster.python} -m {ENTRYPOINT_MODULE} --request {shlex.quote(str(request_path))}"
        ti = context.get("ti") if hasattr(context, "get") else None
        metadata = {
            "gd.dag_id": str(dag_run.dag_id),
            "gd.run_id": str(dag_run.run_id),
            "gd.task_id": str(self.task_id),
            "gd.map_index": str(getattr(ti, "map_index", -1)),
            "gd.try_number": str(getattr(ti, "try_number", "")),
        }
        try:
            client.submit_job(
                entrypoint=entrypoint,
                submission_id=submission_id,
                runtime_env=self._runtime_env(cluster),
                metadata=metadata,
            )
        except RuntimeError as exc:
            if "already exists" not in str(exc):
                raise AirflowException(f"submitting Ray job {submission_id} failed: {exc}") from exc
            self.log.info("Ray job %s was submitted concurrently by another try: adopting it", submission_id)
            info = self._job_info(client, submission_id)
            return submission_id, _status_name(info.status) if info is not None else "PENDING"
        self.log.info("Submitted Ray job %s to %s: %s", submission_id, cluster.dashboard_url, entrypoint)
        return submission_id, "PENDING"

    def _train_remotely(
        self, context: Any, spec: Any, cluster: Any, mlflow_config: Any, experiment_id: str
    ) -> dict[str, Any]:
        from gd_provider.hooks.ray import job_client_for

        t0 = time.monotonic()
        client = job_client_for(cluster)
        jobs_dir = self._jobs_dir(context)
        self._jobs_dir_path = jobs_dir
        submission_id, status = self._adopt_or_submit(context, client, spec, cluster, jobs_dir)
        self._job_client, self._submission_id = client, submission_id
        push_link(context, RayJobLink, ray_job_url(cluster.link_base, submission_id))
        if status in _ACTIVE and self.deferrable:
            from gd_provider.triggers.ray import RayJobTrigger

            timeout_at = (
                (datetime.now(UTC) + timedelta(seconds=float(self.job_timeout))).isoformat()
                if self.job_timeout
                else None
            )
            self.defer(
                trigger=RayJobTrigger(
                    submission_id=submission_id,
                    ray_conn_id=self.ray_conn_id,
                    poll_interval=self.poll_interval,
                    timeout_at=timeout_at,
                    stop_marker=str(self._stop_marker(jobs_dir, submission_id)),
                ),
                method_name="execute_complete",
            )
        status = self._wait(client, submission_id)
        result, request = self._collect(client, submission_id, status, jobs_dir)
        self.log.info("Ray job %s: %s after %.1f s in this try", submission_id, status, time.monotonic() - t0)
        return self._finish_remote(context, spec, result, request, mlflow_config, experiment_id, cluster, submission_id)

    def _finish_remote(
        self, context, spec, result, request, mlflow_config, experiment_id, cluster, submission_id
    ) -> dict[str, Any]:
        from gd_provider.core.training.spec import TrainingSpec

        trained_spec = TrainingSpec.from_dict(request["spec"]) if request.get("spec") else spec
        settings = request.get(REQUEST_SETTINGS_KEY)
        if isinstance(settings, dict):  # the overrides this job was submitted with (see _adopt_or_submit)
            self._overrides = (dict(settings.get("spec_overrides") or {}), settings.get("rerun"))
        return self._finish(
            context,
            trained_spec,
            result,
            request["dataset"],
            mlflow_config,
            experiment_id,
            tags={"gd.ray.submission_id": submission_id, "gd.ray.dashboard": cluster.link_base},
            extra={"ray_job": {"submission_id": submission_id, "dashboard_url": cluster.link_base}},
            logged_record=self._jobs_dir(context) / f"{submission_id}.mlflow.json",
        )

    def _wait(self, client: Any, submission_id: str) -> str:
        """Poll until the job ends, copying its new log lines into the task log; returns the status."""
        deadline = time.monotonic() + float(self.job_timeout) if self.job_timeout else None
        offset, errors = 0, 0
        while True:
            try:
                status = _status_name(client.get_job_status(submission_id))
                offset = self._tail_logs(client, submission_id, offset, final=status not in _ACTIVE)
                errors = 0
            except (OSError, RuntimeError) as exc:
                if isinstance(exc, RuntimeError) and _is_not_found(exc):
                    raise AirflowException(
                        f"Ray job {submission_id} disappeared from the cluster (restarted?): {exc}"
                    ) from exc
                errors += 1
                if errors >= 10:
                    raise AirflowException(f"Ray Jobs API kept failing while waiting for {submission_id}: {exc}") from exc
                self.log.warning("Polling Ray job %s failed (%d in a row): %s", submission_id, errors, exc)
                time.sleep(self.poll_interval)
                continue
            if status not in _ACTIVE:
                return status
            if deadline is not None and time.monotonic() > deadline:
                self._stop(client, submission_id)
                raise AirflowException(
                    f"Ray job {submission_id} still {status} after job_timeout={self.job_timeout} s: stopped it"
                )
            time.sleep(self.poll_interval)

    def _tail_logs(self, client: Any, submission_id: str, offset: int, *, final: bool = False) -> int:
        try:
            logs = client.get_job_logs(submission_id) or ""
        except Exception as exc:  # logs are a courtesy; the status decides
            self.log.debug("Could not fetch logs of Ray job %s: %s", submission_id, exc)
            return offset
        from gd_provider.triggers.ray import new_log_lines

        lines, offset = new_log_lines(logs, offset, final=final)
        for line in lines:
            self.log.info("[ray job %s] %s", submission_id, line)
        return offset

    def _log_tail(self, client: Any, submission_id: str, lines: int = LOG_TAIL_LINES) -> str:
        try:
            logs = client.get_job_logs(submission_id) or ""
        except Exception as exc:
            return f"(job logs unavailable: {exc})"
        return "\n".join(logs.rstrip().splitlines()[-lines:])

    def _stop(self, client: Any, submission_id: str) -> None:
        if self._jobs_dir_path is not None:
            from gd_provider.triggers.ray import write_stop_marker

            try:
                write_stop_marker(self._stop_marker(self._jobs_dir_path, submission_id), f"task {self.task_id}")
            except OSError as exc:
                self.log.warning("Could not write the stop marker of Ray job %s: %s", submission_id, exc)
        try:
            stopped = client.stop_job(submission_id)
            self.log.info("Stop requested for Ray job %s (was running: %s)", submission_id, stopped)
        except Exception as exc:
            self.log.warning("Could not stop Ray job %s: %s", submission_id, exc)

    def _collect(self, client: Any, submission_id: str, status: str, jobs_dir: Path) -> tuple[Any, dict[str, Any]]:
        """The TrainingResult of a finished job and its request; raises for failed/stopped jobs."""
        from gd_provider.core.training.runner import TrainingResult

        request_path = self._request_path(jobs_dir, submission_id)
        try:
            request = json.loads(request_path.read_text())
        except (OSError, ValueError) as exc:
            raise AirflowFailException(
                f"Ray job {submission_id} ended {status}, but its request {request_path} cannot be read: {exc}"
            ) from exc
        result_path = Path(request["result_path"])
        envelope = json.loads(result_path.read_text()) if result_path.is_file() else None
        if envelope is not None and envelope.get("kind") == "input_error":
            raise AirflowFailException(
                f"cannot train: {envelope.get('error')} (Ray job {submission_id} {status}). Last lines of its "
                f"log:\n{self._log_tail(client, submission_id)}"
            )
        if status == "SUCCEEDED":
            if envelope is None or envelope.get("kind") != "result":
                raise AirflowFailException(
                    f"Ray job {submission_id} SUCCEEDED but wrote no result at {result_path}: the Ray cluster and "
                    "the Airflow workers must see the project home at the same path (shared volume)"
                )
            return TrainingResult.from_dict(envelope["result"]), request
        info = self._job_info(client, submission_id)
        message = (getattr(info, "message", None) or "").strip().splitlines()
        error_type = _status_name(getattr(info, "error_type", None)) if getattr(info, "error_type", None) else None
        raise AirflowException(
            f"Ray job {submission_id} ended {status}"
            + (f" ({error_type})" if error_type else "")
            + (f": {message[0]}" if message else "")
            + f". A retry resubmits it as a new job. Last lines of its log:\n{self._log_tail(client, submission_id)}"
        )

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        """Resume after ``RayJobTrigger``: read the job's result exactly as the synchronous wait does."""
        from gd_provider.hooks.ray import RayHook, job_client_for

        submission_id = event.get("submission_id") or ""
        cluster = RayHook(self.ray_conn_id).cluster_config()
        if cluster is None:
            raise AirflowException(f"Ray connection {self.ray_conn_id!r} no longer points at a cluster")
        self._submission_id = submission_id
        if event.get("status") == "error":
            raise AirflowException(f"waiting for Ray job {submission_id} failed: {event.get('message')}")
        client = job_client_for(cluster)
        self._job_client = client
        self._jobs_dir_path = self._jobs_dir(context)
        if event.get("status") == "timeout":
            self._stop(client, submission_id)
            raise AirflowException(f"{event.get('message')}; job_timeout={self.job_timeout} s: stopped it")
        status = str(event.get("job_status"))
        result, request = self._collect(client, submission_id, status, self._jobs_dir(context))
        mlflow_config, experiment_id = self._experiment()
        return self._finish_remote(context, None, result, request, mlflow_config, experiment_id, cluster, submission_id)

    def on_kill(self) -> None:
        """The task is being killed: stop its training (synchronous mode; the trigger handles deferral).

        In-task training (embedded Ray): Airflow 3.3's SIGTERM handler only calls ``on_kill`` and lets the
        task run on until SIGKILL, 5 s later, with the local Ray instance left to its reaper. Interrupting
        the main thread here (the signal handler runs there) unwinds the training now - Ray's blocking calls
        pass on only ``KeyboardInterrupt``/``SystemExit`` from a signal handler - so Ray Train is stopped and
        the private Ray instance shut down before a next try can start writing the same run directory; the
        task then fails retryably (a SIGTERM may be a worker shutting down, not a user's clear).

        Ray stops a job asynchronously; waiting (briefly: Airflow sends SIGKILL 5 s after SIGTERM) until
        it has left RUNNING lets the next try - a clear while training runs - find it STOPPED and resubmit,
        instead of adopting a job that is about to stop."""
        if self._training_locally:
            self.log.warning("Task killed while training in-task: stopping Ray Train and the local Ray instance")
            self._killed = True
            raise KeyboardInterrupt("task killed: stop the in-task training")
        if self._job_client is not None and self._submission_id:
            self._stop(self._job_client, self._submission_id)
            deadline = time.monotonic() + ON_KILL_WAIT_S
            while time.monotonic() < deadline:
                try:
                    if _status_name(self._job_client.get_job_status(self._submission_id)) not in _ACTIVE:
                        return
                except Exception:  # the stop was requested; the status is a courtesy
                    return
                time.sleep(0.25)
