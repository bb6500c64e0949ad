"""MLflow registry operations: idempotent registration, audited promotion, rollback.

Plain MLflow (no Airflow import). MLflow aliases keep no history, so every champion change records
the previous champion on the new version (tag ``gd.previous_champion``) and appends an entry to the
audit trail, kept as registered-model tags ``gd.audit.NNNNNN`` (JSON) in the same registry as the
alias itself, so both deployment modes keep it with the models.

Writes survive retries and crashes: registration reconciles by run key before and after its one create
(never retried blindly, see :func:`register_model`), and a change of an alias is journaled (intent tag
``gd.intent.<alias>`` before the move, audit entry after, see :func:`pending_change`), so an interrupted
promotion or rollback is completed - or dropped, when nothing moved - by the next change of that alias.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

AUDIT_PREFIX = "gd.audit."
INTENT_PREFIX = "gd.intent."  # + alias: a change of that alias under way (JSON), see promote()
PREVIOUS_CHAMPION_TAG = "gd.previous_champion"
RUN_KEY_TAG = "gd.run_key"
FINGERPRINT_TAG = "gd.training_fingerprint"
TRAINING_RUN_TAG = "gd.training_run_id"
DUPLICATE_OF_TAG = "gd.duplicate_of"
NO_CHAMPION = "none"
CHANGE_ACTIONS = ("promote", "rollback")  # the audit entries that move an alias
CREATE_ATTEMPTS = 3  # create-model-version tries, each after a search found no version for the run

_log = logging.getLogger(__name__)


class RegistryError(RuntimeError):
    """A registry operation cannot be done as asked; nothing was changed."""


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str
    registry_uri: str | None = None
    artifact_root: str | None = None
    token: str | None = field(default=None, repr=False)  # never in logs
    ui_url: str | None = None  # where people open the MLflow UI (extra links)
    username: str | None = field(default=None, repr=False)  # HTTP basic auth, as MLflow reads it from
    password: str | None = field(default=None, repr=False)  # MLFLOW_TRACKING_USERNAME / _PASSWORD

    def __post_init__(self) -> None:
        # Credentials never stay in a printable URI: MLflow prints the tracking URI ("View run at ...") and
        # errors name it. user:pw@ of an HTTP(S) URI moves to username/password (a database URI keeps its own).
        for attr in ("tracking_uri", "registry_uri"):
            uri, user, pw = split_http_credentials(getattr(self, attr))
            object.__setattr__(self, attr, uri)
            if (user or pw) and not (self.username or self.password or self.token):
                object.__setattr__(self, "username", user)
                object.__setattr__(self, "password", pw)

    def activate(self) -> None:
        """Point this process's MLflow at this store (MLflow's client API reads process state)."""
        import mlflow

        _set_credentials({"MLFLOW_TRACKING_USERNAME": self.username, "MLFLOW_TRACKING_PASSWORD": self.password,
                          "MLFLOW_TRACKING_TOKEN": self.token})
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


def split_http_credentials(uri: str | None) -> tuple[str | None, str | None, str | None]:
    """``(uri without user info, username, password)`` of an ``http(s)://user:pw@host`` URI (user and password
    percent-decoded, as MLflow's environment variables take them); any other URI is returned unchanged."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    if not uri or not uri.lower().startswith(("http://", "https://")) or "@" not in uri.split("/", 3)[2]:
        return uri, None, None
    parts = urlsplit(uri)
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = unquote(parts.username) if parts.username else None
    pw = unquote(parts.password) if parts.password else None
    return urlunsplit(parts._replace(netloc=netloc)), user, pw


_CREDENTIALS_SET: dict[str, str] = {}  # the MLflow credential variables this process set, by name


def _set_credentials(values: dict[str, str | None]) -> None:
    """Set MLflow's credential variables to ``values``; one that this process set for another store and that
    this store does not use is removed (never sent to the wrong server). A variable the environment itself
    holds (set before, not by us) is kept unless this store sets its own."""
    for name, value in values.items():
        if value:
            os.environ[name] = _CREDENTIALS_SET[name] = value
        elif name in _CREDENTIALS_SET and os.environ.get(name) == _CREDENTIALS_SET.pop(name):
            os.environ.pop(name, None)


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
    return _search_run_key(client, model_name, run_key)


def _search_run_key(client, model_name: str, run_key: str) -> list:
    escaped = run_key.replace("'", "\\'")
    found = client.search_model_versions(f"name = '{model_name}' and tags.`{RUN_KEY_TAG}` = '{escaped}'")
    return sorted(found, key=lambda v: int(v.version))


def _matches(mv, fingerprint: str | None, run_id: str | None) -> bool:
    if fingerprint is None:
        return True
    tagged = mv.tags.get(FINGERPRINT_TAG)
    return tagged == fingerprint or (tagged is None and run_id is not None and mv.run_id == run_id)


def find_version_by_run_key(
    client, model_name: str, run_key: str, *, fingerprint: str | None = None, run_id: str | None = None
):
    """The version registered for ``run_key`` and this training, or None.

    Without ``fingerprint`` the first version of the run key. With it, the version whose
    ``gd.training_fingerprint`` tag matches (same dataset digest and training spec); a version registered
    before fingerprints were tagged matches when it was created from the same training run (``run_id``).
    A version marked as a duplicate (``gd.duplicate_of``) is the run's version only when no other is.
    """
    found = [mv for mv in versions_by_run_key(client, model_name, run_key) if _matches(mv, fingerprint, run_id)]
    return _first(found)


def _first(versions: list):
    return next((mv for mv in versions if not mv.tags.get(DUPLICATE_OF_TAG)), versions[0] if versions else None)


def _same_create(a, b) -> bool:
    """Two versions from one create request (sent twice by a retrying client or gateway): same source, training
    run, DAG run and training fingerprint."""
    def key(mv):
        return (mv.source, mv.run_id, mv.tags.get(RUN_KEY_TAG), mv.tags.get(FINGERPRINT_TAG))

    return key(a) == key(b)


def _keep_first(client, model_name: str, versions: list, run_key: str):
    """The first of ``versions`` (oldest first: one DAG run's versions of one training); any later one made by
    the same create request is a duplicate: marked ``gd.duplicate_of``, deleted unless an alias points at it,
    and said so in the log and the audit trail (once per duplicate, however often this runs)."""
    keep = _first(versions)
    if keep is None:
        return None
    for dup in versions:
        if dup is keep or not (dup.tags.get(DUPLICATE_OF_TAG) or _same_create(dup, keep)):
            continue
        aliases = sorted(getattr(dup, "aliases", None) or [])
        _append_audit(client, model_name, {
            "action": "duplicate_removed", "alias": None, "change_id": f"duplicate:{dup.version}",
            "version": str(dup.version), "kept": str(keep.version), "run_key": run_key, "actor": "gd_provider",
            "deleted": not aliases, **({"aliases": aliases} if aliases else {}),
            "reason": "one registration reached the registry twice (a retried create): the first version is kept"})
        client.set_model_version_tag(model_name, dup.version, DUPLICATE_OF_TAG, str(keep.version))
        if aliases:
            _log.warning("%s v%s duplicates v%s (one registration of %s that reached the registry twice) but "
                         "@%s points at it: marked %s=%s, not deleted", model_name, dup.version, keep.version,
                         run_key, ", @".join(aliases), DUPLICATE_OF_TAG, keep.version)
            continue
        _delete_version(client, model_name, str(dup.version))
        _log.warning("%s v%s duplicated v%s (one registration of %s reached the registry twice, e.g. a retried "
                     "create): deleted it, keeping the first (audit trail: duplicate_removed)", model_name,
                     dup.version, keep.version, run_key)
    return keep


def _delete_version(client, model_name: str, version: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_model_version(model_name, version)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
            raise


@contextlib.contextmanager
def without_http_retries() -> Iterator[None]:
    """MLflow's HTTP client retries every request on a 5xx answer or a lost one, POSTs included (urllib3
    ``allowed_methods=None``): a create the server carried out but whose answer was lost is sent again and
    creates a second one. It reads ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` at each request, so this sets it to 0
    for the calls inside (process-wide: a task's process runs that task alone). Non-idempotent calls go
    through here and have their own retry policy: search first, create again only when nothing is there."""
    var = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
    old = os.environ.get(var)
    os.environ[var] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = old


def _transient(exc: BaseException) -> bool:
    """A failure a later try may not have (transport, 5xx), as opposed to a refusal (bad request, permission)."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return getattr(exc, "error_code", "") in ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED",
                                                  "DEADLINE_EXCEEDED", "ABORTED")
    return isinstance(exc, OSError)


def _ensure_registered_model(client, model_name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(model_name, tags={"gd.managed": "true"})
    except MlflowException as exc:
        # a retried create whose first try the server carried out; else: is it there after all?
        if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS" and not _model_exists(client, model_name):
            raise


def _create_version(client, model_name: str, model_uri: str, *, run_id: str | None, tags: dict[str, str],
                    existing: Callable[[], list]):
    """``create_model_version`` sent once per try (HTTP retries off); after a failed try, ``existing()`` (a
    search by run key) tells whether the server created it anyway - then that version is the one - and only
    when nothing is there is the create tried again (transient failures, :data:`CREATE_ATTEMPTS` tries)."""
    from mlflow.store.artifact.utils.models import _parse_model_id_if_present

    # An MLflow server needs the logged model's id with a ``models:/m-…`` source; SQLite stores don't care.
    model_id = _parse_model_id_if_present(model_uri)
    for attempt in range(1, CREATE_ATTEMPTS + 1):
        try:
            with without_http_retries():
                return client.create_model_version(model_name, model_uri, run_id=run_id, tags=tags,
                                                   model_id=model_id)
        except Exception as exc:
            found = existing()  # fails too when the registry is gone: the task's retry reconciles first
            if found:
                _log.warning("Creating a version of %s failed (%s: %s), but the registry has v%s for this run and "
                             "training: the server created it; using it", model_name, type(exc).__name__, exc,
                             found[0].version)
                return found[0]
            if attempt == CREATE_ATTEMPTS or not _transient(exc):
                raise
            _log.warning("Creating a version of %s failed (%s: %s) and none exists for this run: trying again "
                         "(%d of %d)", model_name, type(exc).__name__, exc, attempt + 1, CREATE_ATTEMPTS)
            time.sleep(0.5 * attempt)
    raise AssertionError("unreachable")


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

    One version per run and training whatever the transport does: the run's versions are searched before
    the create and after it; the create itself is never retried blindly (:func:`without_http_retries`): after a
    failed try, a search tells whether the server created it anyway. A duplicate that got in all the same (a
    gateway that retried on its own) is removed, keeping the first (see :func:`_keep_first`).
    """
    exists = _model_exists(client, model_name)

    def existing_versions() -> list:  # this run's versions of this training, oldest first
        return [mv for mv in _search_run_key(client, model_name, run_key) if _matches(mv, fingerprint, run_id)]

    # reconcile before every create: a retry, a rerun, or a create whose answer was lost finds its version
    existing = _keep_first(client, model_name, existing_versions(), run_key) if exists else None
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
    if not exists:
        _ensure_registered_model(client, model_name)
    all_tags = {k: str(v) for k, v in tags.items()}
    all_tags[RUN_KEY_TAG] = run_key
    if fingerprint is not None:
        all_tags[FINGERPRINT_TAG] = fingerprint
    mv = _create_version(client, model_name, model_uri, run_id=run_id, tags=all_tags, existing=existing_versions)
    # ... and after: a create that reached the server twice (a client or a gateway retrying) left a duplicate
    kept = _keep_first(client, model_name, existing_versions() or [mv], run_key)
    return str(kept.version), True


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


def _registered(client, model_name: str):
    """The registered model - its tags (audit trail, intents) and aliases in one request - or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(model_name)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _entries(tags: dict[str, str]) -> list[dict[str, Any]]:
    return [json.loads(v) for k, v in sorted(tags.items()) if k.startswith(AUDIT_PREFIX)]


def audit_trail(client, model_name: str) -> list[dict[str, Any]]:
    model = _registered(client, model_name)
    return [] if model is None else _entries(model.tags)


def record_decision(client, model_name: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Append a decision that moves nothing (e.g. a person rejecting a promotion) to the audit trail; idempotent
    per ``entry["change_id"]`` when given (a retried task records it once)."""
    return _append_audit(client, model_name, dict(entry))


def _append_audit(client, model_name: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Append ``entry`` to the audit trail. Idempotent per ``change_id``: when an entry with the same one is
    there (a completed change retried), that entry is returned and nothing is written."""
    tags = client.get_registered_model(model_name).tags
    change = entry.get("change_id")
    if change:
        done = next((e for e in _entries(tags) if e.get("change_id") == change), None)
        if done is not None:
            return done
    seq = 1 + max((int(k[len(AUDIT_PREFIX) :]) for k in tags if k.startswith(AUDIT_PREFIX)), default=0)
    entry = {"seq": seq, "at": _now(), **entry}
    client.set_registered_model_tag(model_name, f"{AUDIT_PREFIX}{seq:06d}", json.dumps(entry, sort_keys=True))
    return entry


# ------------------------------------------------------------------------------------------ journaled changes
# A change of an alias (promotion, rollback) is journaled on the registered model: the intent - tag
# ``gd.intent.<alias>``: JSON with change_id, action, from, to, actor, reason, dag_run (and forced / overridden)
# - is written before the alias moves; the audit entry (carrying the change_id) is appended after, then the
# intent is cleared. Whoever next changes that alias (the interrupted task's retry, a rollback, a person's
# rollback) first settles a pending intent: the alias at its target -> the move happened, its audit entry is
# written from the intent (who and why included) if missing; otherwise nothing moved and the intent is dropped.
# So a crash at any point leaves either no move, or a move whose audit entry the next change completes.


def pending_change(client, model_name: str, alias: str = "champion") -> dict[str, Any] | None:
    """The intent of an interrupted change of ``alias`` (see above), or None."""
    model = _registered(client, model_name)
    return None if model is None else _intent_of(model.tags, alias)


def _intent_of(tags: dict[str, str], alias: str) -> dict[str, Any] | None:
    raw = tags.get(INTENT_PREFIX + alias)
    if not raw:
        return None
    try:
        intent = json.loads(raw)
    except ValueError:
        return {"change_id": None, "action": "unreadable", "alias": alias, "from": None, "to": None, "raw": raw}
    return intent if isinstance(intent, dict) else None


def _begin_change(client, model_name: str, record: dict[str, Any]) -> dict[str, Any]:
    intent = {"change_id": uuid.uuid4().hex, "intended_at": _now(), **record}
    client.set_registered_model_tag(model_name, INTENT_PREFIX + record["alias"], json.dumps(intent, sort_keys=True))
    return intent


def _clear_intent(client, model_name: str, alias: str) -> None:
    """Best effort: a pending intent whose change is complete is only cleared by the next change."""
    try:
        client.delete_registered_model_tag(model_name, INTENT_PREFIX + alias)
    except Exception as exc:
        _log.warning("%s@%s: could not clear the completed change's intent (%s: %s); the next change of the "
                     "alias clears it", model_name, alias, type(exc).__name__, exc)


def _finish_change(client, model_name: str, intent: dict[str, Any], *, late: bool = False) -> dict[str, Any]:
    """The alias is at the intent's target: append its audit entry (once per change), tag a rolled-back
    version, clear the intent."""
    fields = {k: v for k, v in intent.items() if k != "intended_at"}
    if late:
        fields["completed"] = "after an interruption, by the next change of the alias"
    entry = _append_audit(client, model_name, fields)
    if intent.get("action") == "rollback":
        # on the version itself too: whoever opens it in the registry sees it was taken out of service, and why
        mark_rolled_back(client, model_name, str(intent["from"]), {
            "to": intent["to"], "by": intent.get("actor"), "reason": intent.get("reason"),
            "dag_run": intent.get("dag_run"), "audit_seq": entry["seq"]})
    _clear_intent(client, model_name, intent["alias"])
    return entry


def _drop_change(client, model_name: str, tags: dict[str, str], intent: dict[str, Any]) -> None:
    """The change never happened (or was undone): no audit entry of it stays, the intent goes."""
    change = intent.get("change_id")
    for key, value in sorted(tags.items()):
        if change and key.startswith(AUDIT_PREFIX) and json.loads(value).get("change_id") == change:
            client.delete_registered_model_tag(model_name, key)
    _clear_intent(client, model_name, intent["alias"])


def _settle(client, model_name: str, alias: str, tags: dict[str, str], current: str | None) -> dict[str, Any] | None:
    """Settle a pending change of ``alias`` before another one: complete it when the alias is at its target
    (returns the audit entry), drop it otherwise (None)."""
    intent = _intent_of(tags, alias)
    if intent is None:
        return None
    if current is not None and intent.get("to") is not None and str(intent["to"]) == str(current):
        entry = _finish_change(client, model_name, intent, late=True)
        _log.warning("%s@%s: completed an interrupted %s v%s -> v%s by %s (%s): audit entry #%s", model_name, alias,
                     intent.get("action"), intent.get("from"), intent.get("to"), intent.get("actor"),
                     intent.get("reason"), entry["seq"])
        return entry
    _drop_change(client, model_name, tags, intent)
    _log.warning("%s@%s: an interrupted %s to v%s never moved the alias (it is %s): dropped its intent",
                 model_name, alias, intent.get("action"), intent.get("to"), _label(current))
    return None


def _complete_or_undo(client, model_name: str, alias: str, intent: dict[str, Any], previous: str | None) -> dict[str, Any]:
    """After the alias moved: complete the change; when its audit entry cannot be written, put the alias back
    (no champion change without its audit entry) and fail. When putting it back fails too (the registry is
    gone), the intent stays: the task's retry - or whoever changes the alias next - completes the change."""
    try:
        return _finish_change(client, model_name, intent)
    except Exception:
        try:
            _restore_alias(client, model_name, alias, previous)
            _drop_change(client, model_name, client.get_registered_model(model_name).tags, intent)
        except Exception as exc:
            _log.warning("%s@%s is v%s, its audit entry not written and the alias not put back (%s: %s): the "
                         "intent %s%s stays, and a retry completes the change", model_name, alias, intent["to"],
                         type(exc).__name__, exc, INTENT_PREFIX, alias)
        raise


class _Unchecked:
    def __repr__(self) -> str:
        return "UNCHECKED"


UNCHECKED: Any = _Unchecked()  # promote() without a compare-and-swap (a person moving the alias by hand)
DATA_INTERVAL_TAG = "gd.data_interval"
LOGICAL_DATE_TAG = "gd.logical_date"


def _label(version: str | None) -> str:
    return "no champion" if version is None else f"v{version}"


def comparison_champion(client, model_name: str, alias: str, run_key: str | None, *,
                        current: Any = UNCHECKED, version_tags: Callable[[str], dict[str, str]] | None = None,
                        ) -> str | None:
    """The champion a DAG run's checks must compare with (``None``: there is none).

    Normally the version ``alias`` points at. When that version was registered by this same DAG run
    (tag ``gd.run_key`` == ``run_key``: the run was cleared after it promoted its own model), comparing
    with it would compare the run with itself; its recorded previous champion (``gd.previous_champion``,
    ``"none"`` → no champion) is the one the run was compared with, followed further back while that,
    too, is a version of this run (a retraining of the same run). A version of this run that became
    champion without a promotion (a manual rollback to it) records no previous champion: it is the one.
    ``current`` (the alias's version) and ``version_tags`` (a version's tags) spare requests a caller made.
    """
    version = get_alias_version(client, model_name, alias) if isinstance(current, _Unchecked) else current
    seen: set[str] = set()
    while version is not None:
        tags = version_tags(version) if version_tags else client.get_model_version(model_name, version).tags
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
    entries: list[dict[str, Any]] | None = None,
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
    known: dict[str, dict[str, str]] = {} if version_tags is None else {str(version): version_tags}

    def tags_of(v: str) -> dict[str, str]:
        if v not in known:
            known[v] = client.get_model_version(model_name, v).tags
        return known[v]

    problems: list[str] = []
    if not isinstance(expected_current, _Unchecked):
        expected = None if expected_current in (None, "", NO_CHAMPION) else str(expected_current)
        baseline = comparison_champion(client, model_name, alias, dag_run, current=current,
                                       version_tags=tags_of) if dag_run else current
        if baseline != expected:
            problems.append(
                f"the gate compared v{version} with {_label(expected)}, but {model_name}@{alias} is now "
                f"{_label(current)}: the champion moved since the evaluation, so v{version} was never compared "
                f"with it (re-run the evaluation against the current champion)"
            )
    rolled_back = [e for e in (audit_trail(client, model_name) if entries is None else entries)
                   if e.get("action") == "rollback" and e.get("alias", alias) == alias and str(e.get("from")) == str(version)]
    if rolled_back:
        last = rolled_back[-1]
        problems.append(
            f"v{version} was rolled back from @{alias} at {last.get('at')} by {last.get('actor')} "
            f"({last.get('reason')}): a model taken out of service goes back only with a force reason"
        )
    if current is not None:
        mine, theirs = data_end(tags_of(str(version))), data_end(tags_of(str(current)))
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
    approval: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Move ``alias`` to ``version``, recording the previous champion first. ``approval``: the human approval
    of this promotion (who, when, comment), recorded in its audit entry.

    Idempotent: when ``alias`` already points at ``version`` (a rerun), nothing moves and the recorded
    previous champion is returned.

    Compare-and-swap: give ``expected_current`` — the champion the gate compared ``version`` with (None
    or ``"none"``: no champion) — and the move is refused with :class:`RegistryError` (alias unchanged,
    nothing recorded) when the champion has moved since (see :func:`promotion_problems`). A version
    trained on older data than the current champion's is refused too. ``force_reason`` overrides both;
    the audit entry then records the reason and what was overridden.

    Journaled (see :func:`pending_change`): the intent is recorded before the alias moves and the audit entry
    after; an interrupted promotion is completed by its retry - which finds the alias at the target and
    writes the missing entry with who and why from the intent (``completed`` in the result) - or dropped
    when the alias never moved.
    """
    mv = client.get_model_version(model_name, version)
    model = client.get_registered_model(model_name)
    current = _alias_of(model, alias)
    completed = _settle(client, model_name, alias, model.tags, current)
    if current == str(version):
        previous = mv.tags.get(PREVIOUS_CHAMPION_TAG, NO_CHAMPION)
        return {"name": model_name, "version": str(version), "alias": alias, "previous_champion": previous,
                "moved": False, **({"completed": completed["seq"]} if completed else {})}
    entries = audit_trail(client, model_name) if completed else _entries(model.tags)
    problems = promotion_problems(client, model_name, str(version), alias=alias, expected_current=expected_current,
                                  dag_run=dag_run, version_tags=mv.tags, current=current, entries=entries)
    forced = str(force_reason or "").strip()
    if problems and not forced:
        raise RegistryError(
            f"refusing to move {model_name}@{alias} from {_label(current)} to v{version}: " + "; ".join(problems)
            + ". Nothing was changed (promote with a force reason to override)"
        )
    extra: dict[str, Any] = {"forced": forced, "overridden": problems} if problems else {}
    if approval:
        extra["approval"] = dict(approval)
    previous = current or NO_CHAMPION
    intent = _begin_change(client, model_name, {"action": "promote", "alias": alias, "from": previous,
                                                "to": str(version), "actor": actor, "reason": reason,
                                                "dag_run": dag_run, **training_settings(mv.tags), **extra})
    client.set_model_version_tag(model_name, version, PREVIOUS_CHAMPION_TAG, previous)
    client.set_registered_model_alias(model_name, alias, str(version))
    _complete_or_undo(client, model_name, alias, intent, current)
    return {"name": model_name, "version": str(version), "alias": alias, "previous_champion": previous,
            "moved": True, **({"overridden": problems} if problems else {})}


def _alias_of(model, alias: str) -> str | None:
    version = (getattr(model, "aliases", None) or {}).get(alias)
    return None if version is None else str(version)


def _restore_alias(client, model_name: str, alias: str, version: str | None) -> None:
    if version is None:
        client.delete_registered_model_alias(model_name, alias)
    else:
        client.set_registered_model_alias(model_name, alias, version)


def _done_by_this_run(
    client, model_name: str, alias: str, current: str, *, dag_run: str | None, expected_current: str | None,
    to_version: str, entries: list[dict[str, Any]] | None = None,
) -> dict[str, Any] | None:
    """The audit entry of this DAG run's rollback when it already happened: the last audit entry for
    ``alias`` that moved it is a rollback by ``dag_run`` (from ``expected_current`` when given, to
    ``to_version`` unless ``"previous"``) and the alias still points at its target. Makes a retried rollback
    a no-op."""
    if not dag_run:
        return None
    entries = [e for e in (audit_trail(client, model_name) if entries is None else entries)
               if e.get("alias", alias) == alias and e.get("action") in CHANGE_ACTIONS]
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

    Journaled like :func:`promote`: an interrupted rollback (or promotion) of ``alias`` is completed - its
    audit entry written from the intent - or dropped before anything else.
    """
    model = _registered(client, model_name)
    current = None if model is None else _alias_of(model, alias)
    completed = None if model is None else _settle(client, model_name, alias, model.tags, current)
    if current is None:
        raise RegistryError(f"model {model_name!r} has no {alias!r} alias: nothing to roll back")
    entries = audit_trail(client, model_name) if completed else _entries(model.tags)
    done = _done_by_this_run(client, model_name, alias, current, dag_run=dag_run, expected_current=expected_current,
                             to_version=str(to_version), entries=entries)
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
    intent = _begin_change(client, model_name, {"action": "rollback", "alias": alias, "from": current,
                                                "to": target, "actor": actor, "reason": reason, "dag_run": dag_run})
    client.set_registered_model_alias(model_name, alias, target)
    entry = _complete_or_undo(client, model_name, alias, intent, current)
    return {"name": model_name, "alias": alias, "from": current, "to": target, "audit_seq": entry["seq"],
            "moved": True}


ROLLED_BACK_TAG = "gd.rolled_back"


def mark_rolled_back(client, model_name: str, version: str, record: dict[str, Any]) -> None:
    """Tag a version taken out of service (``gd.rolled_back``: JSON with to, by, reason, dag_run, audit_seq, at);
    best effort once the alias moved: the audit trail is the record of truth."""
    with contextlib.suppress(Exception):
        client.set_model_version_tag(model_name, str(version), ROLLED_BACK_TAG,
                                     json.dumps({**record, "at": _now()}, sort_keys=True)[:5000])
