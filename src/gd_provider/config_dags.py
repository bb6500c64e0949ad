"""The deployable DAGs that serve every retraining config: feature materialization and manual rollback.

Both read the same folder of retraining configs as :func:`gd_provider.factory.build_dags_from_folder`
(``dags/configs/*.yaml``), so a new model's config brings its feature views into the nightly
materialization and its name into the rollback form, with no DAG file to edit. A config that fails
validation is left out here too (``dags/retraining_config_check.py`` reports it).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

MATERIALIZATION_DAG_ID = "gd_feature_materialization"
MANUAL_ROLLBACK_DAG_ID = "gd_manual_rollback"


def valid_configs(folder: str | Path) -> list[Any]:
    """The :class:`~gd_provider.factory.RetrainingConfig` of every config in ``folder`` that validates."""
    from gd_provider.dag_factory import ConfigError, load_config

    out = []
    for path in sorted(Path(folder).glob("*.y*ml")):
        try:
            out.append(load_config(path))
        except ConfigError:
            continue  # reported by retraining_config_check.py
    return out


def materialization_plan(configs: list[Any]) -> list[dict[str, Any]]:
    """One materialization task per Feast connection and what it materializes:
    ``[{"task_id", "feast_conn_id", "feature_views" | "feature_service", "models"}]``.

    A config's views are its ``freshness.feature_views`` (what its ``features_fresh`` sensor waits for);
    a config without them contributes its ``features.feature_service`` (one task per service, its views
    resolved by Feast at run time)."""
    views: dict[str, dict[str, None]] = {}  # feature views per connection, in order
    models: dict[str, list[str]] = {}
    services: dict[tuple[str, str], list[str]] = {}
    for cfg in configs:
        conn = cfg.feast_conn_id
        named = cfg.freshness.feature_views if cfg.freshness is not None else None
        if named:
            views.setdefault(conn, {}).update(dict.fromkeys(named))
            models.setdefault(conn, []).append(cfg.model_name)
        elif cfg.features.feature_service:
            services.setdefault((conn, cfg.features.feature_service), []).append(cfg.model_name)
    plan = []
    for conn, names in views.items():
        suffix = "" if conn == "feast_default" else f"_{_ident(conn)}"
        plan.append({"task_id": f"materialize{suffix}", "feast_conn_id": conn, "feature_views": list(names),
                     "models": models[conn]})
    for (conn, service), owners in services.items():
        suffix = "" if conn == "feast_default" else f"_{_ident(conn)}"
        plan.append({"task_id": f"materialize{suffix}_{_ident(service)}", "feast_conn_id": conn,
                     "feature_service": service, "models": owners})
    return plan


def _ident(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


def build_materialization_dag(folder: str | Path, *, dag_id: str = MATERIALIZATION_DAG_ID) -> Any:
    """Daily incremental materialization of the feature views every config in ``folder`` reads.

    Each materialized view emits an Asset event ``feast://<project>/<view>``, so a retraining DAG can be
    scheduled on those Assets (``schedule: {assets: [...]}``) instead of a cron; a cron-scheduled one waits
    for them through its ``features_fresh`` sensor."""
    from airflow.sdk import DAG

    from gd_provider.operators.features import FeastMaterializeOperator

    plan = materialization_plan(valid_configs(folder))
    models = sorted({m for step in plan for m in step["models"]})
    with DAG(
        dag_id=dag_id,
        description="Materialize the feature views of every retraining config; emits one Asset per view",
        schedule="@daily",
        start_date=datetime(2026, 1, 1, tzinfo=UTC),
        catchup=False,
        max_active_runs=1,
        tags=["gd_provider", "features"],
        doc_md=f"Materializes the feature views read by {', '.join(models) or 'no config yet'} "
               f"(from the retraining configs in `{folder}`).",
    ) as dag:
        for step in plan:
            FeastMaterializeOperator(
                task_id=step["task_id"], feast_conn_id=step["feast_conn_id"], incremental=True,
                feature_views=step.get("feature_views"), feature_service=step.get("feature_service"),
                doc_md=f"For {', '.join(step['models'])}",
            )
    return dag


def build_manual_rollback_dag(folder: str | Path, *, dag_id: str = MANUAL_ROLLBACK_DAG_ID) -> Any:
    """Manual rollback from the Airflow UI ("Trigger DAG"): pick the model (the configs' models are
    proposed), the target version (a number, or ``previous`` = the champion recorded before the current
    one) and give a reason. The triggering user, the reason and this DAG run go into the model's audit
    trail. The rollback is a journaled change (:func:`gd_provider.core.registry.rollback`): when MLflow fails
    mid-way the task is retried, and the retry completes the interrupted rollback - its audit entry written
    with who and why - or, when the alias never moved, does it; a refused rollback is not retried."""
    from airflow.sdk import DAG, Param

    from gd_provider.operators.registry import RollbackModelOperator

    configs = valid_configs(folder)
    names = list(dict.fromkeys(cfg.model_name for cfg in configs))
    aliases = list(dict.fromkeys(cfg.alias for cfg in configs)) or ["champion"]
    known = ", ".join(f"{cfg.model_name}@{cfg.alias} ({cfg.dag_id})" for cfg in configs) or "none yet"
    examples: dict[str, Any] = {"examples": names} if names else {}
    model_param = Param(names[0] if names else "", type="string", minLength=1,
                        description=f"Registered model to roll back. Models of the retraining configs: {known}",
                        **examples)
    with DAG(
        dag_id=dag_id,
        description="Roll a model's champion alias back, with a reason, from the UI",
        schedule=None,
        start_date=datetime(2026, 1, 1, tzinfo=UTC),
        catchup=False,
        max_active_runs=1,
        tags=["gd_provider", "registry", "manual"],
        doc_md=build_manual_rollback_dag.__doc__,
        params={
            "model_name": model_param,
            "to_version": Param("previous", type="string", pattern=r"^(previous|[0-9]+)$",
                                description="The version to put back in service: a version number, or 'previous' "
                                            "(the champion recorded on the current one when it was promoted)"),
            "alias": Param(aliases[0], type="string", minLength=1, examples=aliases,
                           description="The alias serving loads (the configs' alias: champion unless set)"),
            "reason": Param(type="string", minLength=5,
                            description="Why (at least 5 characters; goes into the model's audit trail)"),
        },
    ) as dag:
        RollbackModelOperator(
            task_id="rollback",
            promote_task_id=None,
            model_name="{{ params.model_name }}",
            to_version="{{ params.to_version }}",
            alias="{{ params.alias }}",
            reason="{{ params.reason }}",
            # a registry that fails mid-way: the retry settles the journaled change (refusals are not retried)
            retries=2,
            retry_delay=timedelta(seconds=20),
        )
    return dag
