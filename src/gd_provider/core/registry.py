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


# Tags holding a gate/drift decision about a version: written once, when the version is created. A rerun
# that reuses the version never rewrites them (the version keeps the decision it was promoted on); a rerun
# that decided differently is recorded next to them in ``gd.gate.rerun.latest``.
DECISION_TAG_PREFIXES = ("gd.blessed", "gd.gate.", "gd.metric.", "gd.drift.")
RERUN_DECISION_TAG = "gd.gate.rerun.latest"
MAX_TAG = 4000


def _is_decision_tag(key: str) -> bool:
    return key == "gd.blessed" or key.startswith(DECISION_TAG_PREFIXES[1:])


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
    exists without its lineage. A reused version keeps its lineage tags: a rerun only adds tags the
    version lacks (e.g. lineage a newer package records), never rewrites one. Decision tags (``gd.blessed``,
    ``gd.gate.*``, ``gd.metric.*``, ``gd.drift.*``) follow the rerun's decision while the version has never
    been champion (it is promoted, if at all, on that decision); once it has been champion they are frozen,
    and a differing rerun decision is recorded in ``gd.gate.rerun.latest`` (JSON).
    """
    existing = find_version_by_run_key(client, model_name, run_key, fingerprint=fingerprint, run_id=run_id)
    if existing is not None:
        # A version that has been champion keeps the decision it was promoted on; one never promoted takes
        # the rerun's decision (e.g. rejected, then blessed against a champion that changed since).
        frozen = existing.tags.get(PREVIOUS_CHAMPION_TAG) is not None
        rerun_decision: dict[str, str] = {}
        new_decision = {key for key in tags if _is_decision_tag(key)}
        for key, value in tags.items():
            value = str(value)
            old = existing.tags.get(key)
            if _is_decision_tag(key):
                if old != value:
                    if frozen:
                        rerun_decision[key] = value
                    else:
                        client.set_model_version_tag(model_name, existing.version, key, value)
            elif old is None:
                client.set_model_version_tag(model_name, existing.version, key, value)
        if not frozen:  # no decision tag of the earlier evaluation left mixed in with the new one
            for key in existing.tags:
                if _is_decision_tag(key) and key not in new_decision and key != RERUN_DECISION_TAG:
                    client.delete_model_version_tag(model_name, existing.version, key)
        if fingerprint is not None and existing.tags.get(FINGERPRINT_TAG) is None:
            client.set_model_version_tag(model_name, existing.version, FINGERPRINT_TAG, fingerprint)
        if rerun_decision:
            note = json.dumps({"at": _now(), "tags": rerun_decision}, sort_keys=True)
            client.set_model_version_tag(model_name, existing.version, RERUN_DECISION_TAG,
                                         note if len(note) <= MAX_TAG else note[: MAX_TAG - 1] + "…")
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


class _Unchecked:
    def __repr__(self) -> str:
        return "UNCHECKED"


UNCHECKED: Any = _Unchecked()  # promote() without a compare-and-swap (a person moving the alias by hand)
DATA_INTERVAL_TAG = "gd.data_interval"
LOGICAL_DATE_TAG = "gd.logical_date"


def _label(version: str | None) -> str:
    return "no champion" if version is None else f"v{version}"


def comparison_champion(client, model_name: str, alias: str, run_key: str | None) -> str | None:
    """The champion a DAG run's checks must compare with (``None``: there is none).

    Normally the version ``alias`` points at. When that version was registered by this same DAG run
    (tag ``gd.run_key`` == ``run_key``: the run was cleared after it promoted its own model), comparing
    with it would compare the run with itself; its recorded previous champion (``gd.previous_champion``,
    ``"none"`` → no champion) is the one the run was compared with, followed further back while that,
    too, is a version of this run (a retraining of the same run). A version of this run that became
    champion without a promotion (a manual rollback to it) records no previous champion: it is the one.
    """
    version = get_alias_version(client, model_name, alias)
    seen: set[str] = set()
    while version is not None:
        tags = client.get_model_version(model_name, version).tags
        if run_key is None or tags.get(RUN_KEY_TAG) != run_key:
            return version
        if version in seen:
            raise RegistryError(f"{model_name}: the previous-champion chain of run {run_key} loops at v{version}")
        seen.add(version)
        previous = tags.get(PREVIOUS_CHAMPION_TAG)
        if previous is None:
            # never promoted, yet champion: put in service by a person (a rollback to it), after this run
            # decided about it - so it is the champion to compare with, like any other
            return version
        version = None if previous == NO_CHAMPION else str(previous)
    return None


def _parse_instant(text: str) -> datetime | None:
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def data_end(version_tags: dict[str, str]) -> datetime | None:
    """The end of the data a version was trained on, from its lineage tags: the end of
    ``gd.data_interval`` (the training set's window), else ``gd.logical_date``; None when neither is there."""
    raw = (version_tags.get(DATA_INTERVAL_TAG) or "").strip()
    if raw:
        interval = _json_or_text(raw)
        end = interval[-1] if isinstance(interval, list) and interval else interval
        if isinstance(end, str) and (parsed := _parse_instant(end)) is not None:
            return parsed
    logical = (version_tags.get(LOGICAL_DATE_TAG) or "").strip()
    return _parse_instant(logical) if logical else None


def promotion_problems(
    client,
    model_name: str,
    version: str,
    *,
    alias: str = "champion",
    expected_current: Any = UNCHECKED,
    dag_run: str | None = None,
    version_tags: dict[str, str] | None = None,
    current: str | None | _Unchecked = UNCHECKED,
) -> list[str]:
    """Why moving ``alias`` to ``version`` now would ship something that was not compared (empty: safe).

    * compare-and-swap: ``expected_current`` is the champion the gate compared ``version`` with (None or
      ``"none"``: there was none). The alias must still be that version — or a version this same DAG run
      (``dag_run``) promoted over it, see :func:`comparison_champion`;
    * data order: ``version`` must not be trained on data older than the current champion's (the end of
      ``gd.data_interval``, else ``gd.logical_date``; unknown on either side → not checked);
    * rolled back: a version once rolled back from ``alias`` (a failed smoke test, a person) is not put back
      by a rerun of its DAG run or anyone else without saying why.
    """
    if isinstance(current, _Unchecked):
        current = get_alias_version(client, model_name, alias)
    problems: list[str] = []
    if not isinstance(expected_current, _Unchecked):
        expected = None if expected_current in (None, "", NO_CHAMPION) else str(expected_current)
        baseline = comparison_champion(client, model_name, alias, dag_run) if dag_run else current
        if baseline != expected:
            problems.append(
                f"the gate compared v{version} with {_label(expected)}, but {model_name}@{alias} is now "
                f"{_label(current)}: the champion moved since the evaluation, so v{version} was never compared "
                f"with it (re-run the evaluation against the current champion)"
            )
    rolled_back = [e for e in audit_trail(client, model_name)
                   if e.get("action") == "rollback" and e.get("alias", alias) == alias and str(e.get("from")) == str(version)]
    if rolled_back:
        last = rolled_back[-1]
        problems.append(
            f"v{version} was rolled back from @{alias} at {last.get('at')} by {last.get('actor')} "
            f"({last.get('reason')}): a model taken out of service goes back only with a force reason"
        )
    if current is not None:
        tags = version_tags if version_tags is not None else client.get_model_version(model_name, version).tags
        mine, theirs = data_end(tags), data_end(client.get_model_version(model_name, current).tags)
        if mine is not None and theirs is not None and mine < theirs:
            problems.append(
                f"v{version} was trained on data up to {mine.isoformat()}, older than champion v{current}'s "
                f"{theirs.isoformat()}"
            )
    return problems


def promote(
    client,
    model_name: str,
    version: str,
    *,
    alias: str = "champion",
    actor: str,
    reason: str,
    dag_run: str | None = None,
    expected_current: Any = UNCHECKED,
    force_reason: str | None = None,
) -> dict[str, Any]:
    """Move ``alias`` to ``version``, recording the previous champion first.

    Idempotent: when ``alias`` already points at ``version`` (a rerun), nothing moves and the recorded
    previous champion is returned.

    Compare-and-swap: give ``expected_current`` — the champion the gate compared ``version`` with (None
    or ``"none"``: no champion) — and the move is refused with :class:`RegistryError` (alias unchanged,
    nothing recorded) when the champion has moved since (see :func:`promotion_problems`). A version
    trained on older data than the current champion's is refused too. ``force_reason`` overrides both;
    the audit entry then records the reason and what was overridden.
    """
    mv = client.get_model_version(model_name, version)
    current = get_alias_version(client, model_name, alias)
    if current == str(version):
        previous = mv.tags.get(PREVIOUS_CHAMPION_TAG, NO_CHAMPION)
        return {"name": model_name, "version": str(version), "alias": alias, "previous_champion": previous,
                "moved": False}
    problems = promotion_problems(client, model_name, str(version), alias=alias, expected_current=expected_current,
                                  dag_run=dag_run, version_tags=mv.tags, current=current)
    forced = str(force_reason or "").strip()
    if problems and not forced:
        raise RegistryError(
            f"refusing to move {model_name}@{alias} from {_label(current)} to v{version}: " + "; ".join(problems)
            + ". Nothing was changed (promote with a force reason to override)"
        )
    extra: dict[str, Any] = {"forced": forced, "overridden": problems} if problems else {}
    previous = current or NO_CHAMPION
    client.set_model_version_tag(model_name, version, PREVIOUS_CHAMPION_TAG, previous)
    client.set_registered_model_alias(model_name, alias, str(version))
    try:
        _append_audit(client, model_name, {"action": "promote", "alias": alias, "from": previous,
                                           "to": str(version), "actor": actor, "reason": reason,
                                           "dag_run": dag_run, **training_settings(mv.tags), **extra})
    except Exception:
        # No champion change without its audit entry: put the alias back, then fail.
        _restore_alias(client, model_name, alias, current)
        raise
    return {"name": model_name, "version": str(version), "alias": alias, "previous_champion": previous,
            "moved": True, **({"overridden": problems} if problems else {})}


def _restore_alias(client, model_name: str, alias: str, version: str | None) -> None:
    if version is None:
        client.delete_registered_model_alias(model_name, alias)
    else:
        client.set_registered_model_alias(model_name, alias, version)


def _done_by_this_run(
    client, model_name: str, alias: str, current: str, *, dag_run: str | None, expected_current: str | None,
    to_version: str,
) -> dict[str, Any] | None:
    """The audit entry of this DAG run's rollback when it already happened: the last audit entry for
    ``alias`` is a rollback by ``dag_run`` (from ``expected_current`` when given, to ``to_version`` unless
    ``"previous"``) and the alias still points at its target. Makes a retried rollback a no-op."""
    if not dag_run:
        return None
    entries = [e for e in audit_trail(client, model_name) if e.get("alias", alias) == alias]
    if not entries:
        return None
    last = entries[-1]
    if last.get("action") != "rollback" or last.get("dag_run") != dag_run or str(last.get("to")) != current:
        return None
    if expected_current is not None and str(last.get("from")) != str(expected_current):
        return None
    if to_version != "previous" and str(to_version) != current:
        return None
    return last


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
    Idempotent per ``dag_run``: when this run's rollback already happened (the last audit entry for the
    alias is it, and the alias still points at its target) a retry returns it with ``moved: False``.
    Fails loudly when there is nothing to restore.
    """
    current = get_alias_version(client, model_name, alias)
    if current is None:
        raise RegistryError(f"model {model_name!r} has no {alias!r} alias: nothing to roll back")
    done = _done_by_this_run(client, model_name, alias, current, dag_run=dag_run, expected_current=expected_current,
                             to_version=str(to_version))
    if done is not None:
        return {"name": model_name, "alias": alias, "from": str(done["from"]), "to": current,
                "audit_seq": done["seq"], "moved": False}
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
    # on the version itself too: whoever opens it in the registry sees it was taken out of service, and why
    mark_rolled_back(client, model_name, current, {"to": target, "by": actor, "reason": reason, "dag_run": dag_run,
                                                   "audit_seq": entry["seq"]})
    return {"name": model_name, "alias": alias, "from": current, "to": target, "audit_seq": entry["seq"],
            "moved": True}


ROLLED_BACK_TAG = "gd.rolled_back"


def mark_rolled_back(client, model_name: str, version: str, record: dict[str, Any]) -> None:
    """Tag a version taken out of service (``gd.rolled_back``: JSON with to, by, reason, dag_run, audit_seq, at);
    best effort once the alias moved: the audit trail is the record of truth."""
    import contextlib

    with contextlib.suppress(Exception):
        client.set_model_version_tag(model_name, str(version), ROLLED_BACK_TAG,
                                     json.dumps({**record, "at": _now()}, sort_keys=True)[:5000])
