"""The rerun override (core.rerun): parsing, validation, and which DAG run it applies to."""

from __future__ import annotations

import json

import pytest

from gd_provider.core.rerun import (
    RerunOverrideError,
    merge_overrides,
    parse_rerun_override,
    rerun_tags,
    rerun_variable_key,
    resolve_training_overrides,
)
from gd_provider.demo.schema import training_spec as demo_training_spec

KEY = rerun_variable_key("gd_nightly_fraud_retraining")
RUN = "manual__2026-02-08T00:00:00+00:00"
GOOD = {"run_id": RUN, "training_overrides": {"lr": 0.003}, "reason": "diverged at lr=50", "requested_by": "alice"}


def test_key_is_per_dag():
    assert KEY == "gd_rerun.gd_nightly_fraud_retraining"


@pytest.mark.parametrize("value", [None, "", {}])
def test_unset_variable_means_no_override(value):
    assert parse_rerun_override(value, variable=KEY) is None
    assert resolve_training_overrides({"epochs": 2}, value, variable=KEY, run_id=RUN) == ({"epochs": 2}, None, None)


@pytest.mark.parametrize("as_text", [False, True])
def test_override_for_this_run_wins_over_the_params(as_text):
    value = json.dumps(GOOD) if as_text else GOOD
    overrides, rerun, note = resolve_training_overrides({"lr": 50.0, "epochs": 2}, value, variable=KEY, run_id=RUN)
    assert overrides == {"lr": 0.003, "epochs": 2} and note is None
    assert rerun.to_dict() == {"mechanism": "airflow_variable", "variable": KEY, "run_id": RUN,
                               "training_overrides": {"lr": 0.003}, "reason": "diverged at lr=50",
                               "requested_by": "alice"}


def test_override_for_another_run_is_ignored_with_a_note():
    overrides, rerun, note = resolve_training_overrides({"lr": 50.0}, GOOD, variable=KEY, run_id="scheduled__x")
    assert overrides == {"lr": 50.0} and rerun is None
    assert RUN in note and "scheduled__x" in note and "ignored" in note


def test_nested_overrides_merge_key_by_key():
    assert merge_overrides({"guards": {"spike_rtol": 3.0, "window": 5}, "lr": 1.0}, {"guards": {"window": 9}}) == {
        "guards": {"spike_rtol": 3.0, "window": 9}, "lr": 1.0}


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("{not json", "not valid JSON"),
        ([1, 2], "must be a JSON object"),
        ({**GOOD, "lr": 0.1}, "unknown field(s) ['lr']"),
        ({**GOOD, "run_id": " "}, "run_id"),
        ({k: v for k, v in GOOD.items() if k != "run_id"}, "run_id"),
        ({**GOOD, "training_overrides": {}}, "training_overrides"),
        ({**GOOD, "training_overrides": "lr=0.1"}, "training_overrides"),
        ({**GOOD, "reason": ""}, "reason"),
        ({k: v for k, v in GOOD.items() if k != "reason"}, "reason"),
        ({**GOOD, "requested_by": 7}, "requested_by"),
    ],
)
def test_malformed_override_is_refused_naming_variable_and_field(value, field):
    with pytest.raises(RerunOverrideError) as err:
        resolve_training_overrides({}, value, variable=KEY, run_id=RUN)
    assert KEY in str(err.value) and field in str(err.value)


def test_param_overrides_must_be_a_mapping():
    with pytest.raises(RerunOverrideError, match=r"spec_overrides \(the training_overrides Param\)"):
        resolve_training_overrides("lr=1", None, variable=KEY, run_id=RUN)


def test_tags_record_mechanism_reason_and_both_override_sources():
    overrides, rerun, _ = resolve_training_overrides({"lr": 50.0, "epochs": 2}, GOOD, variable=KEY, run_id=RUN)
    training = {"spec_overrides": overrides, "param_overrides": {"lr": 50.0, "epochs": 2}, "rerun": rerun.to_dict()}
    assert rerun_tags(training) == {
        "gd.rerun.mechanism": "airflow_variable", "gd.rerun.variable": KEY, "gd.rerun.reason": "diverged at lr=50",
        "gd.rerun.training_overrides": {"lr": 0.003}, "gd.rerun.param_overrides": {"lr": 50.0, "epochs": 2},
        "gd.rerun.requested_by": "alice",
    }
    assert rerun_tags({"spec_overrides": {"lr": 1.0}, "rerun": None}) == {}


# --------------------------------------------------------------------------- RayTrainOperator's use of it
def _train_op(variable_value, monkeypatch, **kwargs):
    from airflow.sdk import Variable

    from gd_provider.operators.training import RayTrainOperator

    seen: list[str] = []

    def fake_get(key, default=None, deserialize_json=False):
        seen.append(key)
        return default if variable_value is None else variable_value

    monkeypatch.setattr(Variable, "get", fake_get)
    op = RayTrainOperator(
        task_id="train", dataset={"uri": "/nowhere/train.parquet", "sha256": "0" * 64, "rows": 10, "columns": []},
        spec=demo_training_spec(epochs=2).to_dict(), model_name="m", rerun_variable=KEY, poll_interval=0.01,
        **kwargs,
    )
    return op, seen


def test_train_applies_the_override_for_its_run_and_reads_the_variable_once(monkeypatch):
    from tests.support import fake_context

    op, seen = _train_op(json.dumps(GOOD), monkeypatch, spec_overrides={"lr": 50.0, "epochs": 3})
    ctx = fake_context(run_id=RUN)
    spec = op._resolve_spec(ctx)
    assert spec.lr == 0.003 and spec.epochs == 3
    overrides, rerun = op._effective_overrides(ctx)
    assert overrides == {"lr": 0.003, "epochs": 3} and rerun["reason"] == "diverged at lr=50"
    assert seen == [KEY]


def test_train_ignores_an_override_for_another_run(monkeypatch):
    from tests.support import fake_context

    op, _ = _train_op(GOOD, monkeypatch, spec_overrides={"lr": 0.01})
    assert op._resolve_spec(fake_context(run_id="scheduled__other")).lr == 0.01
    assert op._effective_overrides(None)[1] is None


def test_train_refuses_an_invalid_override_naming_the_variable(monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from tests.support import fake_context

    op, _ = _train_op({**GOOD, "training_overrides": {"lr": -1.0}}, monkeypatch)
    with pytest.raises(AirflowFailException, match=r"rerun override from Variable 'gd_rerun\.gd_nightly.*lr"):
        op._resolve_spec(fake_context(run_id=RUN))
    op, _ = _train_op({**GOOD, "training_overrides": {"learning_rate": 0.1}}, monkeypatch)
    with pytest.raises(AirflowFailException, match="learning_rate"):
        op._resolve_spec(fake_context(run_id=RUN))
    op, _ = _train_op({**GOOD, "reason": ""}, monkeypatch)
    with pytest.raises(AirflowFailException, match="reason"):
        op._resolve_spec(fake_context(run_id=RUN))


@pytest.mark.parametrize("earlier_status", ["SUCCEEDED", "RUNNING"])
def test_a_remote_rerun_with_other_settings_does_not_adopt_the_earlier_job(earlier_status, monkeypatch, gd_home):
    """A cleared ``train`` rerun with a rerun override submits a new Ray job instead of adopting the job the
    earlier try submitted with the old settings (a running one is stopped); the same settings still adopt."""
    from tests.support import fake_context
    from tests.unit.test_ray_jobs import FakeJobs, bind

    client, ctx = bind(monkeypatch, FakeJobs()), fake_context(run_id=RUN)
    first, _ = _train_op(None, monkeypatch, spec_overrides={"lr": 50.0})
    base = first._base_submission_id(ctx)
    jobs_dir = first._jobs_dir(ctx)
    spec = first._resolve_spec(ctx)
    assert first._adopt_or_submit(ctx, spec, jobs_dir) == (base, "PENDING")
    client.jobs[base] = earlier_status
    same, _ = _train_op(None, monkeypatch, spec_overrides={"lr": 50.0})
    assert same._adopt_or_submit(ctx, same._resolve_spec(ctx), jobs_dir) == (base, earlier_status)
    rerun, _ = _train_op(GOOD, monkeypatch, spec_overrides={"lr": 50.0})
    new_spec = rerun._resolve_spec(ctx)
    assert rerun._adopt_or_submit(ctx, new_spec, jobs_dir) == (f"{base}-r2", "PENDING")
    assert client.stopped == ([base] if earlier_status == "RUNNING" else [])
    request = json.loads((jobs_dir / f"{base}-r2.request.json").read_text())
    assert request["spec"]["lr"] == 0.003
    # its Ray Train run (checkpoints) is not the earlier one: resuming that would mix two trainings
    earlier = json.loads((jobs_dir / f"{base}.request.json").read_text())
    assert earlier["run_name"] == f"train-test_dag_{RUN}".replace(":", "_").replace("+", "_")
    assert request["run_name"].startswith(earlier["run_name"] + "-rerun-")


def test_a_deferred_resume_records_the_overrides_the_job_was_submitted_with(monkeypatch, gd_home):
    """``execute_complete`` runs in a fresh operator: it records the settings stored in the job's request,
    not the rerun Variable as it reads by then (edited or deleted while the job ran)."""
    from tests.support import fake_context
    from tests.unit.test_ray_jobs import FakeJobs, _cluster, bind

    bind(monkeypatch, FakeJobs())
    cluster, ctx = _cluster(), fake_context(run_id=RUN)
    submitting, _ = _train_op(GOOD, monkeypatch, spec_overrides={"lr": 50.0})
    spec = submitting._resolve_spec(ctx)
    sid, _ = submitting._adopt_or_submit(ctx, spec, submitting._jobs_dir(ctx))
    request = json.loads((submitting._jobs_dir(ctx) / f"{sid}.request.json").read_text())
    assert request["airflow_settings"]["rerun"]["reason"] == "diverged at lr=50"

    resumed, seen = _train_op(None, monkeypatch, spec_overrides={"lr": 50.0})  # the Variable is gone now
    recorded = {}

    def fake_finish(context, trained_spec, *args, **kwargs):
        recorded["spec"], recorded["settings"] = trained_spec, resumed._effective_overrides(context)
        return {}

    monkeypatch.setattr(resumed, "_finish", fake_finish)
    resumed._finish_remote(ctx, None, None, request, None, "0", cluster, sid)
    overrides, rerun = recorded["settings"]
    assert recorded["spec"].lr == 0.003 and overrides["lr"] == 0.003
    assert rerun is not None and rerun["reason"] == "diverged at lr=50" and seen == []


def test_a_models_own_variable_is_read_and_an_override_left_in_the_dags_variable_is_reported(monkeypatch):
    """One model of several in a DAG reads gd_rerun.<dag_id>.<task id>; an override for this run left in the
    DAG's gd_rerun.<dag_id> (the only key before per-task Variables) is not applied, and the log says so."""
    from airflow.sdk import Variable

    from gd_provider.operators.training import RayTrainOperator
    from tests.support import fake_context

    values = {"gd_rerun.two_models": json.dumps({**GOOD, "run_id": "r1"})}
    monkeypatch.setattr(Variable, "get", lambda key, default=None, deserialize_json=False: values.get(key, default))
    op = RayTrainOperator(
        task_id="b_training.train", dataset={"uri": "/nowhere/t.parquet", "sha256": "0" * 64, "rows": 10, "columns": []},
        spec={"lr": 0.01, **{k: v for k, v in _demo_spec().items() if k != "lr"}}, model_name="b",
        rerun_variable=rerun_variable_key("two_models", "b_training.train"), spec_overrides={},
    )
    warnings: list[str] = []
    monkeypatch.setattr(type(op), "log", property(lambda self: _Recorder(warnings)))
    assert op._resolve_spec(fake_context(run_id="r1", dag_id="two_models")).lr == 0.01  # not applied
    assert len(warnings) == 1 and "'gd_rerun.two_models'" in warnings[0] and "NOT applied" in warnings[0]
    assert "'gd_rerun.two_models.b_training.train'" in warnings[0]

    # an override for that model in its own Variable is applied, and nothing is reported
    values["gd_rerun.two_models.b_training.train"] = values.pop("gd_rerun.two_models")
    warnings.clear()
    op._overrides = None
    assert op._resolve_spec(fake_context(run_id="r1", dag_id="two_models")).lr == 0.003
    assert not any("NOT applied" in w for w in warnings)


class _Recorder:
    def __init__(self, sink: list[str]) -> None:
        self.sink = sink

    def warning(self, msg: str, *args: object) -> None:
        self.sink.append(msg % args)

    def info(self, msg: str, *args: object) -> None:
        pass


def _demo_spec() -> dict:

    return demo_training_spec(epochs=2).to_dict()
