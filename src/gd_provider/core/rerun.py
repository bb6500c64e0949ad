"""Rerun one night's training with new settings: the *rerun override* (plain Python, no Airflow import).

Airflow 3.3 keeps a DAG run's conf (its Params) for the life of the run: neither the Clear dialog
(``POST /dags/{dag_id}/clearTaskInstances``, ``POST /dags/{dag_id}/dagRuns/{run_id}/clear``) nor
``PATCH /dags/{dag_id}/dagRuns/{run_id}`` can change it, so a cleared ``train`` would rerun with the same
``training_overrides``. To fix one night's training without recomputing its upstream outputs, the
engineer writes a rerun override into the Airflow Variable ``gd_rerun.<dag_id>`` (Admin → Variables; in a
DAG with several models, ``gd_rerun.<dag_id>.<task id>`` of that model's training task, see
:func:`rerun_variable_key`)::

    {"run_id": "scheduled__2026-02-07T00:00:00+00:00",
     "training_overrides": {"lr": 0.003},
     "reason": "night diverged at lr=0.5; back to the configured lr",
     "requested_by": "alice"}

and then clears ``train`` with *Downstream*. ``train`` reads the Variable once per try, logs what it applied, stores it
in a remote job's request (so a deferred resume or a later adopting try records the settings the job was
really submitted with) and applies ``training_overrides`` on top
of the run's ``training_overrides`` Param — only in the DAG run named by ``run_id``: a stale override
never leaks into another night. The override is validated like the Param (a mapping of TrainingSpec
fields, checked against the spec before Ray starts) and must give a reason. What was applied is recorded
on the MLflow training run, on the registered version's lineage tags and in the promotion audit entry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

VARIABLE_PREFIX = "gd_rerun."
_FIELDS = {"run_id", "training_overrides", "reason", "requested_by"}


class RerunOverrideError(ValueError):
    """A rerun override is malformed; the message names the Variable and the field."""


def rerun_variable_key(dag_id: str, task_id: str = "train") -> str:
    """The Airflow Variable holding the rerun override of the training task ``task_id`` in ``dag_id``'s
    runs: ``gd_rerun.<dag_id>`` for the nightly DAG's ``train``, ``gd_rerun.<dag_id>.<task_id>`` for a
    training task with another id (e.g. ``b_training.train``, one model of several in a DAG), so that an
    override for one model never retrains another."""
    return f"{VARIABLE_PREFIX}{dag_id}" if task_id == "train" else f"{VARIABLE_PREFIX}{dag_id}.{task_id}"


@dataclass(frozen=True)
class RerunOverride:
    variable: str
    run_id: str
    training_overrides: dict[str, Any]
    reason: str
    requested_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mechanism": "airflow_variable", "variable": self.variable, "run_id": self.run_id,
                               "training_overrides": self.training_overrides, "reason": self.reason}
        if self.requested_by:
            out["requested_by"] = self.requested_by
        return out


def parse_rerun_override(value: Any, *, variable: str) -> RerunOverride | None:
    """The override in a Variable's value (JSON text or already decoded); None when the Variable is unset
    or empty. Raises :class:`RerunOverrideError` when it is malformed."""
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RerunOverrideError(f"Variable {variable!r}: not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise RerunOverrideError(f"Variable {variable!r}: must be a JSON object, got {type(value).__name__}")
    unknown = sorted(set(value) - _FIELDS)
    if unknown:
        raise RerunOverrideError(f"Variable {variable!r}: unknown field(s) {unknown}; known: {sorted(_FIELDS)}")
    run_id = value.get("run_id")
    if not isinstance(run_id, str) or not run_id.strip():
        raise RerunOverrideError(f"Variable {variable!r}: run_id: the DAG run id to rerun is required")
    overrides = value.get("training_overrides")
    if not isinstance(overrides, dict) or not overrides:
        raise RerunOverrideError(
            f"Variable {variable!r}: training_overrides: a non-empty mapping of training spec fields is required"
        )
    reason = value.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise RerunOverrideError(f"Variable {variable!r}: reason: say why this run is retrained differently")
    requested_by = value.get("requested_by")
    if requested_by is not None and not isinstance(requested_by, str):
        raise RerunOverrideError(f"Variable {variable!r}: requested_by: must be a string")
    return RerunOverride(variable=variable, run_id=run_id.strip(), training_overrides=dict(overrides),
                         reason=reason.strip(), requested_by=(requested_by or "").strip() or None)


def merge_overrides(base: dict[str, Any] | None, extra: dict[str, Any] | None) -> dict[str, Any]:
    """``base`` updated by ``extra``; nested mappings (``guards``, ``sensitivity``) are merged key by key."""
    out = dict(base or {})
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def resolve_training_overrides(
    param_overrides: Any, variable_value: Any, *, variable: str, run_id: str
) -> tuple[dict[str, Any], RerunOverride | None, str | None]:
    """``(effective overrides, applied rerun override or None, note)`` for one try of ``train``.

    The run's Param overrides, updated by the rerun override when it names this DAG run. ``note`` says
    why an existing override was not applied (another run). Field names and values are validated when
    the result is applied to the TrainingSpec.
    """
    if param_overrides in (None, ""):
        param_overrides = {}
    if not isinstance(param_overrides, dict):
        raise RerunOverrideError(
            f"spec_overrides (the training_overrides Param): must be a mapping, got {param_overrides!r}"
        )
    rerun = parse_rerun_override(variable_value, variable=variable)
    if rerun is None:
        return dict(param_overrides), None, None
    if rerun.run_id != run_id:
        return dict(param_overrides), None, (
            f"Variable {variable!r} holds a rerun override for run {rerun.run_id!r}, not this run {run_id!r}: ignored"
        )
    return merge_overrides(param_overrides, rerun.training_overrides), rerun, None


def rerun_tags(training: dict[str, Any]) -> dict[str, Any]:
    """Tags (MLflow run, model version) recording a training manifest's rerun override; {} when none."""
    rerun = training.get("rerun") if isinstance(training, dict) else None
    if not rerun:
        return {}
    tags: dict[str, Any] = {
        "gd.rerun.mechanism": rerun.get("mechanism", "airflow_variable"),
        "gd.rerun.variable": rerun.get("variable", ""),
        "gd.rerun.reason": rerun.get("reason", ""),
        "gd.rerun.training_overrides": rerun.get("training_overrides", {}),
        "gd.rerun.param_overrides": training.get("param_overrides") or {},
    }
    if rerun.get("requested_by"):
        tags["gd.rerun.requested_by"] = rerun["requested_by"]
    return tags
