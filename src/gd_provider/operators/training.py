"""Ray Train training of the challenger, tracked in MLflow - inside the task or as a job on a Ray cluster."""

from __future__ import annotations

import hashlib
import json
import shlex
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, conf
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from gd_provider.links import MlflowRunLink, RayJobLink, mlflow_run_url, push_link, ray_job_url
from gd_provider.operators._common import run_dir, run_key, safe_name, task_key

if TYPE_CHECKING:
    from gd_provider.hooks.ray import JobSubmission, RayClusterConfig, RayHook

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
ON_KILL_WAIT_S = 4.0  # on_kill waits this long for a stopped job to leave RUNNING (SIGKILL follows in 5 s)


class RayTrainOperator(BaseOperator):
    """Train a model with Ray Train's TorchTrainer on a dataset manifest and log it to MLflow; returns the
    training manifest (``mlflow_run_id``, ``model_uri``, ``metrics``, ``health``, ``spec``...).

    Trains inside the task when the Ray connection is ``local``, else as a Ray job on the cluster, through
    :class:`~gd_provider.hooks.ray.RayHook` (a retry adopts the job of an earlier try; the project home must
    be on storage the cluster sees at the same path). A diverged run is logged (no model) and fails without
    retry; so does an input error. See the README's "Pointing it at real services" section.

    :param dataset: the dataset manifest (templated).
    :param spec: the ``TrainingSpec`` (or its dict), checked when the DAG is parsed.
    :param model_name: registered model name (and the default experiment name).
    :param spec_overrides: spec fields a run changes, e.g. ``{{ params.training_overrides }}`` (templated).
    :param rerun_variable: Variable holding a rerun override for one DAG run (``core.rerun``).
    :param experiment_name: MLflow experiment (default ``model_name``).
    :param ray_conn_id: Ray connection (templated): ``local`` or a cluster's Jobs API.
    :param mlflow_conn_id: MLflow connection.
    :param deferrable: wait for a Ray job in the triggerer (default ``[operators] default_deferrable``).
    :param poll_interval: seconds between status polls of a Ray job.
    :param job_timeout: seconds a try waits for its Ray job before stopping it and failing.
    :param runtime_env: merged into the Ray job's runtime_env (after the connection's).
    """

    template_fields: Sequence[str] = ("dataset", "spec_overrides", "ray_conn_id", "mlflow_conn_id")
    ui_color = "#d9d2f0"
    operator_extra_links = (MlflowRunLink(), RayJobLink())

    def __init__(
        self,
        *,
        dataset: Any,
        spec: dict[str, Any],
        model_name: str,
        spec_overrides: dict[str, Any] | str | None = None,  # a mapping, or a template rendering to one
        rerun_variable: str | None = None,
        experiment_name: str | None = None,
        ray_conn_id: str = "ray_default",
        mlflow_conn_id: str = "mlflow_default",
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
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
        self._submission_id: str | None = None
        self._jobs_dir_path: Path | None = None
        self._training_locally = False
        self._killed = False

    @cached_property
    def hook(self) -> RayHook:
        """The Ray connection's hook, built on first use (after ``ray_conn_id`` is rendered)."""
        from gd_provider.hooks.ray import RayHook

        return RayHook(self.ray_conn_id)

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
        self._overrides = None  # read the rerun override afresh for this try
        spec = self._resolve_spec(context)
        cluster = self.hook.cluster_config()
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
        recorded = {"spec_overrides": overrides, "param_overrides": dict(self.spec_overrides or {}),  # type: ignore[arg-type]
                    "rerun": rerun}  # spec_overrides rendered: a mapping
        all_tags = {"gd.dag_id": dag_run.dag_id, "gd.airflow_run_id": dag_run.run_id, "gd.run_key": key,
                    **{k: v if isinstance(v, str) else json.dumps(v, sort_keys=True)
                       for k, v in rerun_tags(recorded).items()},
                    **(tags or {})}
        logged = self._logged_before(logged_record, mlflow_config, all_tags) if logged_record else None
        if logged is None:
            from gd_provider.core.training.logs import routed_logger

            with routed_logger("mlflow"):  # MLflow's own stderr lines: ERROR in the task log; its INFO at DEBUG
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
        from gd_provider.hooks.ray import ray_submission_id

        dag_run = context["dag_run"]
        ti = context.get("ti") if hasattr(context, "get") else None
        return ray_submission_id(dag_run.dag_id, dag_run.run_id, self.task_id, getattr(ti, "map_index", -1))

    @staticmethod
    def _jobs_dir(context: Any) -> Path:
        """Where the jobs' request, result, MLflow record and stop marker files live (the shared volume)."""
        return run_dir(context, JOBS_SUBDIR)

    @staticmethod
    def _request_path(jobs_dir: Path, submission_id: str) -> Path:
        return jobs_dir / f"{submission_id}.request.json"

    @staticmethod
    def _stop_marker(jobs_dir: Path, submission_id: str) -> Path:
        from gd_provider.hooks.ray import stop_marker_path

        return stop_marker_path(jobs_dir, submission_id)

    def _marker(self, submission_id: str) -> Path | None:
        return None if self._jobs_dir_path is None else self._stop_marker(self._jobs_dir_path, submission_id)

    @property
    def _who(self) -> str:
        return f"task {self.task_id}"

    def _runtime_env(self, cluster: RayClusterConfig) -> dict[str, Any]:
        """The job's runtime_env: ``DEFAULT_JOB_ENV`` env vars, then the connection's, then the operator's."""
        runtime_env: dict[str, Any] = {}
        env_vars = dict(DEFAULT_JOB_ENV)
        for layer in (cluster.runtime_env, self.runtime_env or {}):
            layer = dict(layer)
            env_vars.update({str(k): str(v) for k, v in (layer.pop("env_vars", None) or {}).items()})
            runtime_env.update(layer)
        # never a connection's, Airflow's or MLflow's credential variables, whoever put them in a runtime_env
        from gd_provider.core.training.worker_env import job_env_vars

        runtime_env["env_vars"] = job_env_vars(env_vars)
        return runtime_env

    def _same_training(self, jobs_dir: Path, submission_id: str, spec: Any) -> bool:
        """Whether the job ``submission_id`` was submitted for this spec and dataset (its request file)."""
        try:
            request = json.loads(self._request_path(jobs_dir, submission_id).read_text())
        except (OSError, ValueError):
            return True  # no request to compare with: keep the adopt-on-retry behaviour
        same_spec = request.get("spec") == json.loads(json.dumps(spec.to_dict()))
        return same_spec and (request.get("dataset") or {}).get("sha256") == self._dataset_dict().get("sha256")

    def _adopt_or_submit(self, context: Any, spec: Any, jobs_dir: Path) -> tuple[str, str]:
        """(submission id, status) of this task's job: an earlier try's, or a new submission."""
        return self.hook.submit_or_adopt(
            self._base_submission_id(context),
            lambda submission_id: self._job_submission(context, spec, jobs_dir, submission_id),
            adoptable=lambda submission_id: self._same_training(jobs_dir, submission_id, spec),
            markers_dir=jobs_dir,
            poll_interval=self.poll_interval,
            who=self._who,
        )

    def _job_submission(self, context: Any, spec: Any, jobs_dir: Path, submission_id: str) -> JobSubmission:
        """Write the job's request file; the entrypoint, runtime_env and metadata to submit it with."""
        from gd_provider.core.training.entrypoint import build_request, write_json_atomic
        from gd_provider.core.training.runner import user_python_paths
        from gd_provider.hooks.ray import JobSubmission

        cluster = self.hook.cluster_config()
        if cluster is None:
            raise AirflowException(f"Ray connection {self.ray_conn_id!r} no longer points at a cluster")
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
        dag_run = context["dag_run"]
        ti = context.get("ti") if hasattr(context, "get") else None
        return JobSubmission(
            entrypoint=f"{cluster.python} -m {ENTRYPOINT_MODULE} --request {shlex.quote(str(request_path))}",
            runtime_env=self._runtime_env(cluster),
            metadata={
                "gd.dag_id": str(dag_run.dag_id),
                "gd.run_id": str(dag_run.run_id),
                "gd.task_id": str(self.task_id),
                "gd.map_index": str(getattr(ti, "map_index", -1)),
                "gd.try_number": str(getattr(ti, "try_number", "")),
            },
        )

    def _train_remotely(
        self, context: Any, spec: Any, cluster: RayClusterConfig, mlflow_config: Any, experiment_id: str
    ) -> dict[str, Any]:
        from gd_provider.hooks.ray import ACTIVE_STATES

        t0 = time.monotonic()
        jobs_dir = self._jobs_dir_path = self._jobs_dir(context)
        submission_id, status = self._adopt_or_submit(context, spec, jobs_dir)
        self._submission_id = submission_id
        push_link(context, RayJobLink, ray_job_url(cluster.link_base, submission_id))
        if status in ACTIVE_STATES and self.deferrable:
            self._defer_to_trigger(submission_id, jobs_dir)
        status = self.hook.wait_for_job(
            submission_id, poll_interval=self.poll_interval, timeout=self.job_timeout,
            stop_marker=self._marker(submission_id), who=self._who,
        )
        result, request = self.hook.collect_result(submission_id, status, self._request_path(jobs_dir, submission_id))
        self.log.info("Ray job %s: %s after %.1f s in this try", submission_id, status, time.monotonic() - t0)
        return self._finish_remote(context, spec, result, request, mlflow_config, experiment_id, cluster, submission_id)

    def _defer_to_trigger(self, submission_id: str, jobs_dir: Path) -> None:
        from gd_provider.triggers.ray import RayJobTrigger

        timeout_at = None
        if self.job_timeout:
            timeout_at = (datetime.now(UTC) + timedelta(seconds=float(self.job_timeout))).isoformat()
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

    def _finish_remote(
        self, context, spec, result, request, mlflow_config, experiment_id, cluster, submission_id
    ) -> dict[str, Any]:
        from gd_provider.core.training.spec import TrainingSpec

        trained_spec = TrainingSpec.from_dict(request["spec"]) if request.get("spec") else spec
        settings = request.get(REQUEST_SETTINGS_KEY)
        if isinstance(settings, dict):  # the overrides this job was submitted with (see _job_submission)
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

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        """Resume after ``RayJobTrigger``: read the job's result exactly as the synchronous wait does."""
        submission_id = event.get("submission_id") or ""
        cluster = self.hook.cluster_config()
        if cluster is None:
            raise AirflowException(f"Ray connection {self.ray_conn_id!r} no longer points at a cluster")
        self._submission_id = submission_id
        if event.get("status") == "error":
            raise AirflowException(f"waiting for Ray job {submission_id} failed: {event.get('message')}")
        jobs_dir = self._jobs_dir_path = self._jobs_dir(context)
        if event.get("status") == "timeout":
            self.hook.stop_job(submission_id, stop_marker=self._marker(submission_id), who=self._who)
            raise AirflowException(f"{event.get('message')}; job_timeout={self.job_timeout} s: stopped it")
        status = str(event.get("job_status"))
        result, request = self.hook.collect_result(submission_id, status, self._request_path(jobs_dir, submission_id))
        mlflow_config, experiment_id = self._experiment()
        return self._finish_remote(context, None, result, request, mlflow_config, experiment_id, cluster, submission_id)

    def on_kill(self) -> None:
        """Stop the training: in-task, interrupt it (Ray Train and the local Ray instance shut down, the try
        fails retryably); remote, stop the Ray job through the hook and wait up to ``ON_KILL_WAIT_S`` for it
        to leave RUNNING, so the next try finds it STOPPED and resubmits. A deferred task is stopped by the
        trigger's ``on_kill``."""
        if self._training_locally:
            # Airflow's SIGTERM handler only calls on_kill, in the main thread: Ray's blocking calls pass on
            # only KeyboardInterrupt/SystemExit from a signal handler, so raising one unwinds the training now.
            self.log.warning("Task killed while training in-task: stopping Ray Train and the local Ray instance")
            self._killed = True
            raise KeyboardInterrupt("task killed: stop the in-task training")
        if self._submission_id:
            self.hook.stop_job(self._submission_id, stop_marker=self._marker(self._submission_id), who=self._who)
            self.hook.wait_until_ended(self._submission_id, ON_KILL_WAIT_S)
