"""Evaluation gate, registration, promotion, smoke test and rollback against the MLflow registry."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from airflow.sdk import BaseOperator, TriggerRule
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from gd_provider.links import (
    MlflowModelVersionLink,
    MlflowRunLink,
    mlflow_model_version_url,
    mlflow_run_url,
    push_link,
)
from gd_provider.operators._common import actor, is_set, load_pyfunc, run_key, task_key


def _registry_failure(what: str, tracking_uri: str, exc: Exception) -> AirflowException:
    """A clear, retryable error when MLflow cannot be reached or refuses mid-operation."""
    return AirflowException(f"{what} failed talking to MLflow at {tracking_uri}: {type(exc).__name__}: {exc}")


class ModelEvaluationGateOperator(BaseOperator):
    """Score the challenger (``training["model_uri"]``) and the current champion on the SAME holdout — the
    latest, time-based slice of this run's dataset, which the challenger never trained on — and decide
    with :class:`gd_provider.core.gate.GatePolicy`. Returns the decision; never fails on a rejection (the
    decision is registered and the promotion skipped with the reason)."""

    template_fields: Sequence[str] = ("dataset", "training")
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
        mlflow_conn_id: str = "mlflow_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        from gd_provider.core.gate import GateConfigError, GatePolicy

        try:  # a bad policy fails when the DAG is parsed (a cheap pure check)
            GatePolicy.from_dict(policy)
        except (GateConfigError, TypeError) as exc:
            raise ValueError(f"{self.task_id}: invalid gate policy: {exc}") from exc
        self.dataset = dataset
        self.training = training
        self.model_name = model_name
        self.policy = policy
        self.alias = alias
        self.mlflow_conn_id = mlflow_conn_id

    def execute(self, context: Any) -> dict[str, Any]:

        from gd_provider.core.gate import (
            GateConfigError,
            GatePolicy,
            HoldoutMismatchError,
            classification_metrics,
            decide,
            verify_holdout,
        )
        from gd_provider.core.registry import RegistryError, comparison_champion, ensure_experiment
        from gd_provider.core.tracking import log_check_run
        from gd_provider.core.training.runner import holdout_frame, holdout_info
        from gd_provider.core.training.spec import TrainingSpec
        from gd_provider.hooks.mlflow import MlflowHook

        try:
            policy = GatePolicy.from_dict(self.policy)
        except GateConfigError as exc:
            raise AirflowFailException(f"evaluation gate misconfigured: {exc}") from exc
        config = MlflowHook(self.mlflow_conn_id).get_config()
        client = config.client()
        spec = TrainingSpec.from_dict(self.training["spec"])
        holdout = holdout_frame(self.dataset, spec)
        held_out = holdout_info(holdout, spec)  # the digest training records, computed the same way
        try:
            verify_holdout(self.training.get("holdout"), rows=held_out["rows"], sha256=held_out["sha256"])
        except HoldoutMismatchError as exc:
            raise AirflowFailException(f"evaluation gate refuses to decide: {exc}") from exc
        y = holdout[spec.label].to_numpy()
        challenger_proba = np.asarray(load_pyfunc(self.training["model_uri"]).predict(holdout))
        challenger = classification_metrics(y, challenger_proba, policy.decision_threshold)
        try:
            # the current champion, or - when this run already promoted its own model (a cleared run) -
            # the champion this run replaced: never the challenger compared with itself
            champion_version = comparison_champion(client, self.model_name, self.alias, run_key(context))
        except RegistryError as exc:
            raise AirflowFailException(f"evaluation gate cannot find its baseline: {exc}") from exc
        champion = None
        if champion_version is not None:
            model = load_pyfunc(f"models:/{self.model_name}/{champion_version}")
            champion = classification_metrics(y, np.asarray(model.predict(holdout)), policy.decision_threshold)
        decision = decide(challenger, champion, policy, champion_version=champion_version)
        decision.holdout_rows = len(holdout)
        decision.holdout_sha256 = held_out["sha256"]
        self.log.info("Evaluation on %d holdout rows: %s", len(holdout), decision.summary())
        metrics = {f"challenger.{k}": v for k, v in challenger.items()}
        metrics.update({f"champion.{k}": v for k, v in (champion or {}).items()})
        experiment_id = ensure_experiment(client, self.model_name, config.artifact_root)
        run_id = log_check_run(
            client, experiment_id, run_key=run_key(context), kind="evaluation", task=task_key(context, self.task_id),
            metrics=metrics,
            tags={"gd.blessed": str(decision.blessed).lower(), "gd.gate.reason": "; ".join(decision.reasons)[:4000],
                  "gd.gate.baseline_version": champion_version or "none",
                  "gd.gate.holdout_sha256": decision.holdout_sha256, "gd.gate.holdout_rows": len(holdout)},
        )
        push_link(context, MlflowRunLink, mlflow_run_url(config.ui_url, experiment_id, run_id))
        return {**decision.to_dict(), "mlflow_run_id": run_id}


class RegisterModelOperator(BaseOperator):
    """Register the trained model once per DAG run and training (a retry or a cleared rerun of the same
    training reuses its version; ``train`` cleared and rerun with other settings registers one new
    version — see :func:`gd_provider.core.registry.register_model`), with lineage tags (DAG run, data interval, dataset digest, feature refs, package version, git sha, seed,
    training run, health) and the gate decision."""

    template_fields: Sequence[str] = ("dataset", "training", "gate")
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

    template_fields: Sequence[str] = ("model", "gate", "reason", "force_reason")
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
        mlflow_conn_id: str = "mlflow_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.force_reason = force_reason
        self.model = model
        self.gate = gate
        self.alias = alias
        self.reason = reason
        self.mlflow_conn_id = mlflow_conn_id

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
        self.log.info("%s@%s: %s -> %s", result["name"], self.alias, result["previous_champion"], result["version"])
        return result


class ModelSmokeTestOperator(BaseOperator):
    """Post-promotion check of what serving would load: ``models:/<name>@<alias>`` from the registry.

    Scores a canary sample of the run's dataset and fails when
    * a score is NaN/inf or outside [0, 1];
    * the positive-prediction rate is outside ``positive_rate_bounds``, or differs from the previous
      champion's rate on the same canary by more than ``max_positive_rate_change`` (absolute);
    * the p95 latency of single-row predictions exceeds ``max_p95_latency_ms``.

    It tests the version this run promoted: ``version`` (templated) when given, else the ``version`` of
    ``promote_task_id``'s XCom (default ``"promote"``; without that XCom, e.g. standalone, whatever the
    alias points at). When the alias no longer points at that version (it was rolled back or replaced
    since, e.g. the smoke test was cleared after a rollback) the task fails and says so: another model's
    smoke test must not turn this run green.
    """

    template_fields: Sequence[str] = ("dataset", "max_p95_latency_ms", "version")
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
        max_p95_latency_ms: float = 250.0,
        positive_rate_bounds: tuple[float, float] = (0.0, 0.5),
        max_positive_rate_change: float | None = 0.05,
        decision_threshold: float = 0.5,
        seed: int = 0,
        version: str | None = None,
        promote_task_id: str | None = "promote",
        mlflow_conn_id: str = "mlflow_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
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
        self.decision_threshold = decision_threshold
        self.seed = seed
        self.mlflow_conn_id = mlflow_conn_id

    def execute(self, context: Any) -> dict[str, Any]:

        from gd_provider.core.data import read_dataset
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
        df = read_dataset(self.dataset)
        canary = df.sample(n=min(self.canary_rows, len(df)), random_state=self.seed)
        proba = np.asarray(model.predict(canary), dtype=float)
        problems = []
        if not np.all(np.isfinite(proba)):
            problems.append(f"{int((~np.isfinite(proba)).sum())} of {len(proba)} scores are NaN/inf")
        elif len(proba) and (proba.min() < 0 or proba.max() > 1):
            problems.append(f"scores outside [0, 1]: min {proba.min():.4f}, max {proba.max():.4f}")
        rate = float(np.mean(proba >= self.decision_threshold)) if len(proba) else 0.0
        lo, hi = self.positive_rate_bounds
        if not lo <= rate <= hi:
            problems.append(f"positive-prediction rate {rate:.4f} outside [{lo}, {hi}]")
        previous = client.get_model_version(self.model_name, version).tags.get(PREVIOUS_CHAMPION_TAG, NO_CHAMPION)
        previous_rate = None
        if previous != NO_CHAMPION and self.max_positive_rate_change is not None:
            prev_model = load_pyfunc(f"models:/{self.model_name}/{previous}")
            previous_rate = float(np.mean(np.asarray(prev_model.predict(canary)) >= self.decision_threshold))
            if abs(rate - previous_rate) > self.max_positive_rate_change:
                problems.append(
                    f"positive-prediction rate {rate:.4f} vs previous champion v{previous}'s {previous_rate:.4f} "
                    f"on the same canary: change above {self.max_positive_rate_change}"
                )
        latencies = []
        for i in range(self.latency_probes):
            row = canary.iloc[[i % len(canary)]]
            t0 = time.perf_counter()
            model.predict(row)
            latencies.append((time.perf_counter() - t0) * 1000)
        p95 = float(np.percentile(latencies, 95))
        budget = float(self.max_p95_latency_ms)
        if p95 > budget:
            problems.append(f"p95 latency {p95:.2f} ms over the {budget} ms budget")
        summary = {"version": version, "canary_rows": len(canary), "positive_rate": rate,
                   "previous_champion": previous, "previous_positive_rate": previous_rate, "p95_latency_ms": p95}
        if problems:
            raise AirflowFailException(
                f"smoke test of {self.model_name}@{self.alias} (v{version}) failed: " + "; ".join(problems)
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

    template_fields: Sequence[str] = ("model_name", "to_version", "reason", "alias")
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

    def execute(self, context: Any) -> dict[str, Any]:
        from gd_provider.core.registry import NO_CHAMPION, RegistryError, rollback
        from gd_provider.hooks.mlflow import MlflowHook

        expected_current = None
        if self.promote_task_id:
            # Pulled here rather than passed as an XComArg: when the promotion never ran (an earlier gate
            # failed) there is no XCom, and that simply means there is nothing to roll back.
            promotion = context["ti"].xcom_pull(task_ids=self.promote_task_id)
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
