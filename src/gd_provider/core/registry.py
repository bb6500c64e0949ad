"""MLflow registry operations: idempotent registration, audited promotion, rollback.

Plain MLflow (no Airflow import). MLflow aliases keep no history, so every champion change records
the previous champion on the new version (tag ``gd.previous_champion``) and appends an entry to the
audit trail, kept as registered-model tags ``gd.audit.NNNNNN`` (JSON) in the same registry as the
alias itself, so both deployment modes keep it with the models.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

AUDIT_PREFIX = "gd.audit."
PREVIOUS_CHAMPION_TAG = "gd.previous_champion"
RUN_KEY_TAG = "gd.run_key"
FINGERPRINT_TAG = "gd.training_fingerprint"
TRAINING_RUN_TAG = "gd.training_run_id"
# Tags naming the artifact a version was created from: a rerun that reuses the version never rewrites them.
_IDENTITY_TAGS = (RUN_KEY_TAG, FINGERPRINT_TAG, TRAINING_RUN_TAG)
NO_CHAMPION = "none"


class RegistryError(RuntimeError):
    """A registry operation cannot be done as asked; nothing was changed."""


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str
    registry_uri: str | None = None
    artifact_root: str | None = None
    token: str | None = field(default=None, repr=False)  # never in logs
    ui_url: str | None = None  # where people open the MLflow UI (extra links)

    def activate(self) -> None:
        """Point this process's MLflow at this store (MLflow's client API reads process state)."""
        import mlflow

        if self.token:
            os.environ["MLFLOW_TRACKING_TOKEN"] = self.token
        # MLflow's HTTP client retries 7 times with exponential back-off (minutes) by default; a task
        # should fail fast and leave retrying to Airflow. An explicit environment setting wins.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.registry_uri or self.tracking_uri)

    def client(self):
        from mlflow import MlflowClient

        self.activate()
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri or self.tracking_uri)


def ensure_experiment(client, name: str, artifact_root: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if artifact_root:
        location = artifact_root.rstrip("/") + "/" + name
        if "://" not in location:
            os.makedirs(location, exist_ok=True)
            location = "file://" + os.path.abspath(location)
    return client.create_experiment(name, artifact_location=location)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def versions_by_run_key(client, model_name: str, run_key: str) -> list:
    """Versions registered for ``run_key`` (e.g. ``<dag_id>/<run_id>``), oldest first."""
    if not _model_exists(client, model_name):
        return []
    escaped = run_key.replace("'", "\\'")
    found = client.search_model_versions(f"name = '{model_name}' and tags.`{RUN_KEY_TAG}` = '{escaped}'")
    return sorted(found, key=lambda v: int(v.version))


def find_version_by_run_key(
    client, model_name: str, run_key: str, *, fingerprint: str | None = None, run_id: str | None = None
):
    """The version registered for ``run_key`` and this training, or None.

    Without ``fingerprint`` the first version of the run key. With it, the version whose
    ``gd.training_fingerprint`` tag matches (same dataset digest and training spec); a version registered
    before fingerprints were tagged matches when it was created from the same training run (``run_id``).
    """
    for mv in versions_by_run_key(client, model_name, run_key):
        if fingerprint is None:
            return mv
        tagged = mv.tags.get(FINGERPRINT_TAG)
        if tagged == fingerprint or (tagged is None and run_id is not None and mv.run_id == run_id):
            return mv
    return None


def find_versions_by_tags(client, model_name: str, tags: dict[str, str]) -> list[str]:
    """Versions of ``model_name`` carrying every tag in ``tags``, oldest first."""
    if not _model_exists(client, model_name):
        return []
    clauses = [f"name = '{model_name}'"]
    for key, value in tags.items():
        escaped = str(value).replace("'", "\\'")
        clauses.append(f"tags.`{key}` = '{escaped}'")
    found = client.search_model_versions(" and ".join(clauses))
    return [str(v.version) for v in sorted(found, key=lambda v: int(v.version))]


def _model_exists(client, model_name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(model_name)
        return True
    except MlflowException as exc:
        if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise


def register_model(
    client,
    model_name: str,
    model_uri: str,
    *,
    run_key: str,
    run_id: str | None,
    tags: dict[str, Any],
    fingerprint: str | None = None,
) -> tuple[str, bool]:
    """Register ``model_uri`` once per ``run_key`` and training: a retry or rerun reuses the existing version.

    ``fingerprint`` (:func:`gd_provider.core.lineage.training_fingerprint`: dataset digest + training spec)
    tells trainings of one DAG run apart. Clearing and rerunning a run with the same data and settings
    reuses its version; clearing ``train`` and rerunning it with other settings (a rerun override)
    registers the new model as one new version, which a later clear of ``register`` reuses in turn.

    Returns ``(version, created)``. Tags are written when the version is created, so a version never
    exists without its lineage. A reused version gets the newer decision tags, never other identity tags
    (run key, fingerprint, training run) than its own.
    """
    existing = find_version_by_run_key(client, model_name, run_key, fingerprint=fingerprint, run_id=run_id)
    if existing is not None:
        for key, value in tags.items():  # a rerun may carry a newer gate decision
            if key in _IDENTITY_TAGS and existing.tags.get(key) is not None:
                continue
            if existing.tags.get(key) != str(value):
                client.set_model_version_tag(model_name, existing.version, key, str(value))
        if fingerprint is not None and existing.tags.get(FINGERPRINT_TAG) is None:
            client.set_model_version_tag(model_name, existing.version, FINGERPRINT_TAG, fingerprint)
        return str(existing.version), False
    if not _model_exists(client, model_name):
        client.create_registered_model(model_name, tags={"gd.managed": "true"})
    all_tags = {k: str(v) for k, v in tags.items()}
    all_tags[RUN_KEY_TAG] = run_key
    if fingerprint is not None:
        all_tags[FINGERPRINT_TAG] = fingerprint
    from mlflow.store.artifact.utils.models import _parse_model_id_if_present

    # An MLflow server needs the logged model's id with a ``models:/m-…`` source; SQLite stores don't care.
    mv = client.create_model_version(
        model_name, model_uri, run_id=run_id, tags=all_tags, model_id=_parse_model_id_if_present(model_uri)
    )
    return str(mv.version), True


def training_settings(version_tags: dict[str, str]) -> dict[str, Any]:
    """What a version was trained with, for the audit trail: the effective training overrides and, when
    a run was retrained by a rerun override, that override (mechanism, Variable, reason, who asked)."""
    out: dict[str, Any] = {}
    if version_tags.get("gd.training_overrides"):
        out["training_overrides"] = _json_or_text(version_tags["gd.training_overrides"])
    rerun = {k[len("gd.rerun."):]: _json_or_text(v) for k, v in version_tags.items() if k.startswith("gd.rerun.")}
    if rerun:
        out["rerun"] = rerun
    return out


def _json_or_text(value: str) -> Any:
    if value[:1] not in ("{", "["):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value  # a clipped tag value


def get_alias_version(client, model_name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def audit_trail(client, model_name: str) -> list[dict[str, Any]]:
    if not _model_exists(client, model_name):
        return []
    tags = client.get_registered_model(model_name).tags
    entries = [json.loads(v) for k, v in sorted(tags.items()) if k.startswith(AUDIT_PREFIX)]
    return entries


def _append_audit(client, model_name: str, entry: dict[str, Any]) -> dict[str, Any]:
    tags = client.get_registered_model(model_name).tags
    seq = 1 + max((int(k[len(AUDIT_PREFIX) :]) for k in tags if k.startswith(AUDIT_PREFIX)), default=0)
    entry = {"seq": seq, "at": _now(), **entry}
    client.set_registered_model_tag(model_name, f"{AUDIT_PREFIX}{seq:06d}", json.dumps(entry, sort_keys=True))
    return entry


def promote(
    client,
    model_name: str,
    version: str,
    *,
    alias: str = "champion",
    actor: str,
    reason: str,
    dag_run: str | None = None,
) -> dict[str, Any]:
    """Move ``alias`` to ``version``, recording the previous champion first.

    Idempotent: when ``alias`` already points at ``version`` (a rerun), nothing moves and the recorded
    previous champion is returned.
    """
    mv = client.get_model_version(model_name, version)
    current = get_alias_version(client, model_name, alias)
    if current == str(version):
        previous = mv.tags.get(PREVIOUS_CHAMPION_TAG, NO_CHAMPION)
        return {"name": model_name, "version": str(version), "alias": alias, "previous_champion": previous,
                "moved": False}
    previous = current or NO_CHAMPION
    client.set_model_version_tag(model_name, version, PREVIOUS_CHAMPION_TAG, previous)
    client.set_registered_model_alias(model_name, alias, str(version))
    try:
        _append_audit(client, model_name, {"action": "promote", "alias": alias, "from": previous,
                                           "to": str(version), "actor": actor, "reason": reason,
                                           "dag_run": dag_run, **training_settings(mv.tags)})
    except Exception:
        # No champion change without its audit entry: put the alias back, then fail.
        _restore_alias(client, model_name, alias, current)
        raise
    return {"name": model_name, "version": str(version), "alias": alias, "previous_champion": previous,
            "moved": True}


def _restore_alias(client, model_name: str, alias: str, version: str | None) -> None:
    if version is None:
        client.delete_registered_model_alias(model_name, alias)
    else:
        client.set_registered_model_alias(model_name, alias, version)


def rollback(
    client,
    model_name: str,
    *,
    alias: str = "champion",
    to_version: str = "previous",
    expected_current: str | None = None,
    actor: str,
    reason: str,
    dag_run: str | None = None,
) -> dict[str, Any]:
    """Point ``alias`` back at the recorded previous champion (or at ``to_version``).

    ``expected_current`` guards automatic rollbacks: when the champion is no longer the version this
    run promoted, someone moved it since, and the rollback refuses to undo their change.
    Fails loudly when there is nothing to restore.
    """
    current = get_alias_version(client, model_name, alias)
    if current is None:
        raise RegistryError(f"model {model_name!r} has no {alias!r} alias: nothing to roll back")
    if expected_current is not None and current != str(expected_current):
        raise RegistryError(
            f"{model_name}@{alias} is version {current}, not {expected_current} as expected: "
            "it was moved since; refusing to roll back over that change"
        )
    if to_version == "previous":
        target = client.get_model_version(model_name, current).tags.get(PREVIOUS_CHAMPION_TAG, NO_CHAMPION)
        if target == NO_CHAMPION:
            raise RegistryError(
                f"{model_name}@{alias} (version {current}) has no recorded previous champion: nothing to restore"
            )
    else:
        target = str(to_version)
        from mlflow.exceptions import MlflowException

        try:
            client.get_model_version(model_name, target)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                raise
            raise RegistryError(f"{model_name} has no version {target}: nothing to roll back to") from exc
    if target == current:
        raise RegistryError(f"{model_name}@{alias} already is version {target}")
    client.set_registered_model_alias(model_name, alias, target)
    try:
        entry = _append_audit(client, model_name, {"action": "rollback", "alias": alias, "from": current,
                                                   "to": target, "actor": actor, "reason": reason,
                                                   "dag_run": dag_run})
    except Exception:
        _restore_alias(client, model_name, alias, current)
        raise
    return {"name": model_name, "alias": alias, "from": current, "to": target, "audit_seq": entry["seq"]}
