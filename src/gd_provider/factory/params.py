"""The Params a retraining DAG's stages read (``training_overrides``, ``drift_policy``, ...): ``as_of`` is one
for the whole run; two models in one DAG get their own under a ``param_prefix``."""

from __future__ import annotations

import re
from typing import Any

from gd_provider.factory.config import ConfigError, RetrainingConfig

SHARED_PARAMS = ("as_of",)  # one value for the whole DAG run, whatever the model
MODEL_PARAMS = ("training_overrides", "drift_policy", "skip_drift_reason", "force_promotion_reason",
                "smoke_test_max_p95_latency_ms")
_PARAM_PREFIX = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*)?$")
# kept on the DAG object (a DAG's hash changes as tasks are added): {Param name: the model whose stages read it}
_PARAM_OWNERS = "_gd_param_owners"


def _param_name(name: str, param_prefix: str) -> str:
    if not isinstance(param_prefix, str) or not _PARAM_PREFIX.fullmatch(param_prefix):
        raise ConfigError(f"param_prefix: {param_prefix!r} must be empty or a Python identifier such as 'b_' "
                          "(it starts the Params' names in templates)")
    return name if name in SHARED_PARAMS else f"{param_prefix}{name}"


def param_templates(param_prefix: str) -> dict[str, str]:
    """``{param: "{{ params.<prefixed name> }}"}`` for the Params a stage reads."""
    return {name: f"{{{{ params.{_param_name(name, param_prefix)} }}}}" for name in (*SHARED_PARAMS, *MODEL_PARAMS)}


def retraining_params(cfg: RetrainingConfig, param_prefix: str = "", *, dag_id: str | None = None,
                      rerun_variable: str | None = None) -> dict[str, Any]:
    """Validated Params for manual runs from the UI (recorded in lineage and the audit trail).

    The model's own Params are named ``<param_prefix><name>``; ``as_of`` is shared by every model of a DAG.
    ``dag_id`` / ``rerun_variable`` only word the descriptions (default: the config's DAG and its ``train``)."""
    from airflow.sdk import Param

    from gd_provider.core.rerun import rerun_variable_key

    rerun_variable = rerun_variable or rerun_variable_key(dag_id or cfg.dag_id)
    about = f" ({cfg.model_name})" if param_prefix else ""
    params = {
        "training_overrides": Param(
            {}, type="object", title="Training overrides",
            description=f'TrainingSpec fields to override{about}, e.g. {{"lr": 0.001, "epochs": 10}}. To retrain an '
                        f"existing run differently, set the Variable {rerun_variable} and clear train + downstream "
                        "(a run's Params cannot be changed after it started)"),
        "drift_policy": Param(cfg.drift.policy, enum=["retrain", "warn", "block"], title="Drift policy",
                              description=f"What drift against the champion's training data does{about}"),
        # Optional text Params are nullable with a null default: the trigger form treats a plain string Param
        # as required and would not submit with its defaults. Empty (or null) means unset.
        "skip_drift_reason": Param(None, type=["null", "string"], title="Skip the drift check: reason",
                                   description=f"Skip the drift check{about} for this run; the reason is recorded. "
                                               "Leave empty to run it"),
        "force_promotion_reason": Param(None, type=["null", "string"], title="Force the promotion: reason",
                                        description=f"Promote{about} even when the gate rejects; the reason is "
                                                    "recorded in the audit trail. Leave empty to let the gate decide"),
        "as_of": Param(None, type=["null", "string"], pattern=r"^(|\d{4}-\d{2}-\d{2}(T[0-9:]+)?)$",
                       title="Data window end (as_of)",
                       description="End of the data window (freshness check, training set, validation) "
                                   "instead of the run's: its data interval end, or for a manual run the last "
                                   "scheduled tick"),
        "smoke_test_max_p95_latency_ms": Param(cfg.smoke_test.max_p95_latency_ms, type="number",
                                               title="Smoke-test latency budget (ms)",
                                               exclusiveMinimum=0, description=f"Smoke-test latency budget{about}"),
    }
    return {_param_name(name, param_prefix): param for name, param in params.items()}


def add_params(task: Any, cfg: RetrainingConfig, param_prefix: str, names: tuple[str, ...], *,
                rerun_variable: str | None = None) -> None:
    """Add the Params a stage reads to the DAG of ``task`` where missing (the DAG's own win), and refuse a
    model's Param that another model's stages already read: an override for one would change both."""
    if not task.has_dag():
        return
    dag = task.dag
    owners: dict[str, str] = vars(dag).setdefault(_PARAM_OWNERS, {})
    wanted = retraining_params(cfg, param_prefix, dag_id=dag.dag_id, rerun_variable=rerun_variable)
    me = f"{cfg.model_name}@{cfg.alias}"  # one model served under one alias: one set of Params
    for name in names:
        key = _param_name(name, param_prefix)
        owner = owners.setdefault(key, me)
        if owner != me and name not in SHARED_PARAMS:
            suggestion = re.sub(r"[^A-Za-z0-9_]", "_", cfg.model_name)
            suggestion = suggestion if suggestion[:1].isalpha() else f"m{suggestion}"
            raise ConfigError(
                f"DAG {dag.dag_id!r}: the stages of {me} would read the Param {key!r}, which the stages of "
                f"{owner} already read (a {name} for one would apply to both): give each model's data_stage, "
                f"training_stage and release_stage its own param_prefix, e.g. param_prefix='{suggestion}_'")
        if key not in dag.params:
            dag.params[key] = wanted[key]
