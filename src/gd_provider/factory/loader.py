"""Build whole DAGs: one from a config (file, dict or :class:`RetrainingConfig`), or one per config in a folder
(a broken config is reported, the others still build)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gd_provider.factory.config import ConfigError, RetrainingConfig, load_config
from gd_provider.factory.params import retraining_params
from gd_provider.factory.stages import (
    RUN_FAILED_ACTION,
    alert_callbacks,
    data_stage,
    release_stage,
    training_stage,
)


def build_retraining_dag(source: str | Path | dict[str, Any] | RetrainingConfig, *, auto_register: bool = True) -> Any:
    """The full retraining DAG for one model, from a config.

    Any error — the config's, or an operator refusing an argument while the DAG is built — is raised as a
    :class:`ConfigError` naming the file (when built from one). A DAG that failed half-way is never
    registered with Airflow. ``auto_register=False``: Airflow finds the DAG only where it is assigned to a
    module-level name (as :func:`build_dags_from_folder` does)."""
    cfg = source if isinstance(source, RetrainingConfig) else load_config(source)
    where = str(source) if isinstance(source, (str, Path)) else "config"
    try:
        return _build(cfg, auto_register=auto_register)
    except ConfigError as exc:
        if str(exc).startswith(f"{where}: "):
            raise
        raise ConfigError(f"{where}: {exc}") from exc
    except Exception as exc:
        raise ConfigError(f"{where}: cannot build DAG {cfg.dag_id!r}: {type(exc).__name__}: {exc}") from exc


def _build(cfg: RetrainingConfig, *, auto_register: bool) -> Any:
    from airflow.sdk import DAG, Asset, chain

    from gd_provider.operators.report import RunReportOperator

    schedule: Any = cfg.schedule.cron if cfg.schedule.cron else [Asset(uri) for uri in cfg.schedule.assets or []]
    with DAG(
        dag_id=cfg.dag_id,
        description=cfg.description or f"Guarded retraining of {cfg.model_name}",
        schedule=schedule,
        start_date=cfg.start_date,
        catchup=cfg.catchup,
        max_active_runs=1,
        render_template_as_native_obj=True,
        default_args={"retries": 0},
        tags=["gd_provider", "retraining", *cfg.tags],
        params=retraining_params(cfg),
        doc_md=__doc__,
        on_failure_callback=alert_callbacks(cfg, "run failed", RUN_FAILED_ACTION),
        auto_register=auto_register,
    ) as dag:
        try:
            data, dataset = data_stage(cfg)
            training_group, training = training_stage(cfg, dataset)
            release = release_stage(cfg, dataset, training)
            chain(data, training_group, release, RunReportOperator(task_id="run_report"))
        except BaseException:
            dag.auto_register = False  # leaving the `with` would register the half-built DAG
            raise
    return dag


def _build_folder(folder: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Build every ``*.yaml``/``*.yml`` in ``folder`` on its own: ``({dag_id: dag}, {file: error})``."""
    dags: dict[str, Any] = {}
    files: dict[str, Path] = {}
    errors: dict[str, str] = {}
    for path in sorted(Path(folder).glob("*.y*ml")):
        try:
            dag = build_retraining_dag(path, auto_register=False)
        except Exception as exc:  # one file's problem, whatever it is, must not stop the others
            message = str(exc)
            errors[str(path)] = message if message.startswith(f"{path}: ") else f"{path}: {type(exc).__name__}: {exc}"
            continue
        if dag.dag_id in dags:
            errors[str(path)] = f"{path}: dag_id: {dag.dag_id!r} is already the dag_id of {files[dag.dag_id]}"
            continue
        dags[dag.dag_id], files[dag.dag_id] = dag, path
    return dags, errors


def build_dags_from_folder(folder: str | Path, namespace: dict[str, Any]) -> dict[str, str]:
    """Turn every ``*.yaml`` in ``folder`` into a DAG in ``namespace`` (a DAG file's ``globals()``).

    A broken config — invalid, or failing while its DAG is built — does not stop the others: its error
    (naming the file, and the field where it is one) is returned, logged, and reported to Airflow as a
    parse warning of the loader file; :func:`config_errors` turns the same errors into an import error.
    """
    import logging
    import warnings

    dags, errors = _build_folder(folder)
    for message in errors.values():
        logging.getLogger(__name__).error("retraining config rejected: %s", message)
        warnings.warn(f"retraining config rejected: {message}", UserWarning, stacklevel=2)
    namespace.update(dags)
    return errors


def config_errors(folder: str | Path) -> dict[str, str]:
    """``{file: error}`` for every config in ``folder`` whose DAG :func:`build_dags_from_folder` leaves out:
    each DAG is built (and discarded), so build errors are found as well as validation errors."""
    return _build_folder(folder)[1]


def raise_config_errors(folder: str | Path) -> None:
    """Raise one :class:`ConfigError` listing every broken config in ``folder`` (one line per file), for
    a DAG file whose import error then shows them in the Airflow UI."""
    errors = config_errors(folder)
    if errors:
        raise ConfigError("invalid retraining config(s):\n" + "\n".join(errors.values()))
