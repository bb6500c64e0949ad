"""Release-stage guards in the registry core (real MLflow: SQLite and an HTTP server).

* promotion is a compare-and-swap on the champion the gate compared with, and never moves the champion to
  a model trained on older data (unless forced with a reason);
* "the champion a run compares with" skips the run's own promoted version (a cleared, finished run);
* a rerun that reuses a version never rewrites its decision tags;
* a retried rollback after its own successful move is a no-op, not a "moved since" failure.
"""

from __future__ import annotations

import json

import mlflow
import pytest

from gd_provider.core import registry

pytestmark = pytest.mark.integration


class _Constant(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return [0.5] * len(model_input)


@pytest.fixture
def client(mlflow_backend):
    return mlflow_backend.client()


@pytest.fixture
def name(request) -> str:
    return "m_" + request.node.name.replace("[", "_").replace("]", "")


@pytest.fixture
def model(client, mlflow_backend):
    exp = registry.ensure_experiment(client, "release-guards", mlflow_backend.artifact_root)
    with mlflow.start_run(experiment_id=exp) as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=_Constant(), pip_requirements=["mlflow"])
    return info.model_uri, run.info.run_id


def _night(n: int) -> dict[str, str]:
    day = f"2026-02-{n:02d}T00:00:00+00:00"
    return {"gd.logical_date": day, "gd.data_interval": json.dumps([f"2026-01-{n:02d}T00:00:00+00:00", day])}


def _register(client, name, model, night: int, fingerprint: str = "f", **tags) -> str:
    uri, run_id = model
    version, _ = registry.register_model(client, name, uri, run_key=f"d/n{night}", run_id=run_id,
                                        fingerprint=fingerprint, tags={**_night(night), **tags})
    return version


def _promote(client, name, version, expected, night, **kw):
    return registry.promote(client, name, version, actor="scheduler", reason="gate blessed",
                            dag_run=f"d/n{night}", expected_current=expected, **kw)


def test_rerun_of_an_old_nights_promotion_cannot_replace_a_newer_champion(client, name, model):
    for n in (1, 2, 3, 4):
        assert _register(client, name, model, n) == str(n)
        _promote(client, name, str(n), str(n - 1) if n > 1 else None, n)
    assert registry.get_alias_version(client, name, "champion") == "4"
    # night 2 cleared and rerun from promote: its gate blessed v2 against v1
    with pytest.raises(registry.RegistryError) as err:
        _promote(client, name, "2", "1", 2)
    message = str(err.value)
    assert "compared v2 with v1, but" in message and "is now v4" in message
    assert "older than champion v4's" in message and "Nothing was changed" in message
    assert registry.get_alias_version(client, name, "champion") == "4"
    assert [e["to"] for e in registry.audit_trail(client, name)] == ["1", "2", "3", "4"]
    assert client.get_model_version(name, "2").tags[registry.PREVIOUS_CHAMPION_TAG] == "1"


def test_a_bootstrap_blessing_cannot_replace_a_champion_that_appeared_since(client, name, model):
    _register(client, name, model, 1)
    _register(client, name, model, 2)
    _promote(client, name, "2", None, 2)  # night 2 got there first
    with pytest.raises(registry.RegistryError, match="compared v1 with no champion, but .* is now v2"):
        _promote(client, name, "1", "none", 1)
    assert registry.get_alias_version(client, name, "champion") == "2"


def test_a_manual_rollback_between_evaluate_and_promote_is_not_undone(client, name, model):
    for n in (1, 2, 3):
        _register(client, name, model, n)
    _promote(client, name, "1", None, 1)
    _promote(client, name, "2", "1", 2)
    # night 3 evaluated v3 against v2; then someone rolled back to v1
    registry.rollback(client, name, to_version="1", actor="alice", reason="v2 bad in prod", dag_run="rb/1")
    with pytest.raises(registry.RegistryError, match="compared v3 with v2, but .* is now v1"):
        _promote(client, name, "3", "2", 3)
    assert registry.get_alias_version(client, name, "champion") == "1"
    assert registry.audit_trail(client, name)[-1]["action"] == "rollback"


def test_older_data_is_refused_unless_forced_with_a_reason(client, name, model):
    _register(client, name, model, 5)
    _register(client, name, model, 3)  # v2: trained on an older interval (a backfill, an as_of run)
    _promote(client, name, "1", None, 5)
    with pytest.raises(registry.RegistryError, match="v2 was trained on data up to 2026-02-03.*older than champion v1"):
        _promote(client, name, "2", "1", 3)
    assert registry.get_alias_version(client, name, "champion") == "1"
    with pytest.raises(registry.RegistryError):
        _promote(client, name, "2", "1", 3, force_reason="   ")  # a blank reason is no reason
    out = _promote(client, name, "2", "1", 3, force_reason="known bad v1, restore older model")
    assert out["moved"] and out["overridden"]
    assert registry.get_alias_version(client, name, "champion") == "2"
    last = registry.audit_trail(client, name)[-1]
    assert last["forced"] == "known bad v1, restore older model" and "older than champion v1" in last["overridden"][0]


def test_promotion_without_expectation_and_same_or_newer_data_still_moves(client, name, model):
    _register(client, name, model, 1)
    _register(client, name, model, 1)  # same run key: reused
    uri, run_id = model
    registry.register_model(client, name, uri, run_key="d/n1b", run_id=run_id, tags=_night(1))
    _promote(client, name, "1", None, 1)
    same_interval = registry.promote(client, name, "2", actor="s", reason="r", dag_run="d/n1b", expected_current="1")
    assert same_interval["moved"]  # the same data interval is not older
    assert registry.promote(client, name, "1", actor="bob", reason="by hand")["moved"]  # unchecked: by hand


def test_comparison_champion_skips_this_runs_own_versions(client, name, model):
    uri, run_id = model
    assert registry.comparison_champion(client, name, "champion", "d/n1") is None
    _register(client, name, model, 1)
    _promote(client, name, "1", None, 1)
    assert registry.comparison_champion(client, name, "champion", "d/n1") is None  # own version, previous 'none'
    assert registry.comparison_champion(client, name, "champion", "d/n2") == "1"
    _register(client, name, model, 2)
    _promote(client, name, "2", "1", 2)
    assert registry.comparison_champion(client, name, "champion", "d/n2") == "1"
    assert registry.comparison_champion(client, name, "champion", "d/n3") == "2"
    # night 2 retrained with other settings (another fingerprint): its second version is compared with v1 too,
    # and may replace the run's own first version
    v3, created = registry.register_model(client, name, uri, run_key="d/n2", run_id=run_id, fingerprint="other",
                                          tags=_night(2))
    assert created and v3 == "3"
    assert _promote(client, name, v3, "1", 2)["previous_champion"] == "2"
    assert registry.comparison_champion(client, name, "champion", "d/n2") == "1"
    # a version of this run put in service without a promotion (a manual rollback to it, after the run
    # decided about it): it is the champion to compare with, not an error that blocks every clear
    v4, _ = registry.register_model(client, name, uri, run_key="d/n2", run_id=run_id, fingerprint="third",
                                    tags=_night(2))
    registry.rollback(client, name, to_version=v4, actor="alice", reason="v3 misbehaves", dag_run="manual/1")
    assert registry.get_alias_version(client, name, "champion") == v4
    assert registry.comparison_champion(client, name, "champion", "d/n2") == v4


def test_a_looping_previous_champion_chain_is_an_error_not_a_hang(client, name, model):
    for n in (1, 2):
        _register(client, name, model, 2, fingerprint=f"f{n}")
    client.set_model_version_tag(name, "1", registry.PREVIOUS_CHAMPION_TAG, "2")
    client.set_model_version_tag(name, "2", registry.PREVIOUS_CHAMPION_TAG, "1")
    client.set_registered_model_alias(name, "champion", "2")
    with pytest.raises(registry.RegistryError, match="previous-champion chain of run d/n2 loops"):
        registry.comparison_champion(client, name, "champion", "d/n2")


def test_reuse_never_rewrites_decision_tags(client, name, model):
    uri, run_id = model
    first = {"gd.blessed": "true", "gd.gate.baseline_version": "1", "gd.metric.roc_auc": "0.800000",
             "gd.drift.share_drifted": "0.2000", "gd.package_version": "0.1.0"}
    assert registry.register_model(client, name, uri, run_key="d/n2", run_id=run_id, fingerprint="f",
                                   tags=first) == ("1", True)
    registry.promote(client, name, "1", actor="scheduler", reason="gate blessed", dag_run="d/n2")
    before = dict(client.get_model_version(name, "1").tags)
    # the same run cleared after it promoted v1: without a baseline fix the rerun compared v1 with itself
    rerun = {"gd.blessed": "true", "gd.gate.baseline_version": "1", "gd.metric.roc_auc": "0.800000",
             "gd.drift.share_drifted": "0.2000", "gd.package_version": "0.1.0"}
    assert registry.register_model(client, name, uri, run_key="d/n2", run_id=run_id, fingerprint="f",
                                   tags=rerun) == ("1", False)
    assert client.get_model_version(name, "1").tags == before  # an identical decision writes nothing
    other = {**rerun, "gd.gate.baseline_version": "2", "gd.metric.roc_auc": "0.500000", "gd.drift.status": "ok",
             "gd.package_version": "0.2.0", "gd.new_lineage": "x"}
    registry.register_model(client, name, uri, run_key="d/n2", run_id=run_id, fingerprint="f", tags=other)
    after = client.get_model_version(name, "1").tags
    for key, value in before.items():
        assert after[key] == value, key
    assert "gd.drift.status" not in after  # no decision tag from another evaluation mixed in
    assert after["gd.new_lineage"] == "x"  # lineage the version lacked is added
    note = json.loads(after[registry.RERUN_DECISION_TAG])
    assert note["tags"] == {"gd.gate.baseline_version": "2", "gd.metric.roc_auc": "0.500000", "gd.drift.status": "ok"}


def test_a_never_promoted_version_takes_the_reruns_decision(client, name, model):
    """Rejected on the night, blessed when the run is cleared later (the champion changed since): the version
    that promotion may now move to carries the decision it is promoted on, not the stale rejection."""
    uri, run_id = model
    rejected = {"gd.blessed": "false", "gd.gate.baseline_version": "3", "gd.gate.reason": "worse than v3",
                "gd.drift.status": "warn"}
    registry.register_model(client, name, uri, run_key="d/n5", run_id=run_id, fingerprint="f", tags=rejected)
    blessed = {"gd.blessed": "true", "gd.gate.baseline_version": "2", "gd.gate.reason": "better than v2"}
    assert registry.register_model(client, name, uri, run_key="d/n5", run_id=run_id, fingerprint="f",
                                   tags=blessed) == ("1", False)
    tags = client.get_model_version(name, "1").tags
    assert {k: tags.get(k) for k in (*blessed, "gd.drift.status")} == {**blessed, "gd.drift.status": None}
    assert registry.RERUN_DECISION_TAG not in tags


def test_a_retried_rollback_is_a_no_op(client, name, model):
    for n in (1, 2):
        _register(client, name, model, n)
    _promote(client, name, "1", None, 1)
    _promote(client, name, "2", "1", 2)
    first = registry.rollback(client, name, to_version="1", expected_current="2", actor="scheduler",
                              reason="smoke test failed", dag_run="d/n2")
    assert first["moved"] and (first["from"], first["to"]) == ("2", "1")
    again = registry.rollback(client, name, to_version="1", expected_current="2", actor="scheduler",
                              reason="smoke test failed", dag_run="d/n2")
    assert not again["moved"] and (again["from"], again["to"], again["audit_seq"]) == ("2", "1", first["audit_seq"])
    assert [e["action"] for e in registry.audit_trail(client, name)] == ["promote", "promote", "rollback"]
    # another run's rollback is still refused: the champion was not moved by it
    with pytest.raises(registry.RegistryError, match="moved since"):
        registry.rollback(client, name, to_version="1", expected_current="2", actor="scheduler",
                          reason="smoke test failed", dag_run="d/other")
    # a rolled-back version goes back only with a force reason (e.g. a whole cleared run would re-promote it)
    with pytest.raises(registry.RegistryError, match=r"v2 was rolled back from @champion .*\(smoke test failed\)"):
        _promote(client, name, "2", "1", 2)
    assert registry.get_alias_version(client, name, "champion") == "1"
    moved = _promote(client, name, "2", "1", 2, force_reason="canary fixed; smoke test passes by hand")
    assert moved["moved"] and "rolled back" in moved["overridden"][0]
    assert registry.audit_trail(client, name)[-1]["forced"] == "canary fixed; smoke test passes by hand"
    # a manual "previous" rollback retried in its own run does not roll back one step further
    registry.rollback(client, name, actor="alice", reason="bad", dag_run="manual/1")
    registry.rollback(client, name, actor="alice", reason="bad", dag_run="manual/1")
    assert registry.get_alias_version(client, name, "champion") == "1"
    assert [e["action"] for e in registry.audit_trail(client, name)][-2:] == ["promote", "rollback"]
