"""The health gate operator, and the training operator's handling of a diverged run (no Ray: the training
core is replaced by a real in-process diverged run)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from airflow.sdk.exceptions import AirflowFailException

from gd_provider.core.training import runner as runner_mod
from gd_provider.core.training.health import health_summary
from gd_provider.core.training.loop import fit_plain
from gd_provider.core.training.runner import TrainingResult
from gd_provider.core.training.spec import TrainingSpec
from gd_provider.demo.schema import training_spec as demo_training_spec
from gd_provider.operators.health import TrainingHealthGate
from gd_provider.operators.training import RayTrainOperator

CONTEXT = {"dag_run": SimpleNamespace(dag_id="gd_test_dag", run_id="manual__1")}


def _steps(n=50, clipped=0):
    return {
        "step": list(range(1, n + 1)),
        "epoch": [1] * n,
        "loss": [0.4] * n,
        "grad_norm": [0.9] * n,
        "lr": [0.01] * n,
        "clipped": [1] * clipped + [0] * (n - clipped),
        "nonfinite": [0] * n,
    }


def test_health_gate_passes_a_healthy_run():
    gate = TrainingHealthGate(
        task_id="health_gate", training={"health": health_summary(_steps(), status="completed")}
    )
    out = gate.execute(CONTEXT)
    assert out["ok"] and all(r.startswith(("PASS", "NOTE")) for r in out["reasons"])


def test_health_gate_stops_on_clipping_and_names_the_numbers():
    gate = TrainingHealthGate(
        task_id="health_gate",
        training={"health": health_summary(_steps(50, clipped=40), status="completed")},
        thresholds={"max_clipped_share": 0.25},
    )
    with pytest.raises(AirflowFailException, match=r"clipped steps 0\.800 \(max 0\.25\)"):
        gate.execute(CONTEXT)


def test_health_gate_stops_on_divergence_and_sensitivity():
    health = health_summary(
        _steps(),
        status="diverged",
        trip={
            "kind": "grad_explosion",
            "reason": "gradient explosion: norm 3e5",
            "step": 42,
            "epoch": 2,
            "batch": 7,
        },
        sensitivity={
            "status": "failed",
            "metric": "val_roc_auc",
            "spread": 0.2,
            "max_spread": 0.05,
            "factors": [0.5, 1.0, 2.0],
            "values": [0.9, 0.8, 0.7],
        },
    )
    gate = TrainingHealthGate(task_id="health_gate", training={"health": health})
    with pytest.raises(AirflowFailException) as err:
        gate.execute(CONTEXT)
    text = str(err.value)
    assert "diverged at step 42 (epoch 2, batch 7): gradient explosion" in text
    assert "sensitivity check failed" in text and "0.5:0.9000" in text


def test_health_gate_rejects_bad_thresholds_and_missing_health():
    with pytest.raises(ValueError, match="g: invalid health thresholds.*max_clip"):  # when the DAG is parsed
        TrainingHealthGate(task_id="g", training={}, thresholds={"max_clip": 1})
    # templated values are checked once rendered: a Jinja string, a templated value, a Jinja block, an XComArg
    TrainingHealthGate(task_id="g1", training={}, thresholds={"max_restarts": "{{ params.max_restarts }}"})
    TrainingHealthGate(task_id="g2", training={}, thresholds="{% if params.strict %}{}{% endif %}")
    TrainingHealthGate(task_id="g3", training={}, thresholds=SimpleNamespace(resolve=lambda ctx: {}))
    gate = TrainingHealthGate(task_id="g", training={}, thresholds="{{ params.health }}")
    gate.thresholds = {"allow_diverged": "false"}
    with pytest.raises(AirflowFailException, match="invalid health thresholds"):
        gate.execute(CONTEXT)
    with pytest.raises(AirflowFailException, match="no health summary"):
        TrainingHealthGate(task_id="g", training={}).execute(CONTEXT)


def _diverged_result(spec: TrainingSpec, run_dir: str) -> TrainingResult:
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(400, 4)) * 30).astype("float32")
    y = (x[:, 0] > 0).astype("float32")
    fit = fit_plain(spec, x, y, x[:50], y[:50], pos_weight=1.0)
    assert fit.trip is not None
    trip = fit.trip.to_dict()
    return TrainingResult(
        status="diverged",
        run_name="train-test",
        run_dir=run_dir,
        history=fit.history,
        steps=fit.steps,
        health=health_summary(fit.steps, status="diverged", spec=spec, trip=trip),
        spec=spec.to_dict(),
        guard=trip,
        error=f"training diverged: {trip['reason']}",
        run_state={"status": "diverged", "trip": trip},
    )


def test_training_operator_logs_a_diverged_run_and_fails_without_a_model(gd_home, monkeypatch):
    spec = TrainingSpec(
        numeric_features=["a", "b", "c", "d"],
        categorical_features=[],
        label="y",
        timestamp_column="ts",
        hidden_sizes=[16],
        optimizer="sgd",
        lr=10.0,
        grad_clip_norm=None,
        batch_size=32,
        epochs=2,
    )
    seen = {}

    def fake_run_training(dataset, spec_arg, **kwargs):
        seen["spec"] = spec_arg
        return _diverged_result(spec_arg, str(gd_home / "ray"))

    monkeypatch.setattr(runner_mod, "run_training", fake_run_training)
    op = RayTrainOperator(
        task_id="train",
        dataset={"uri": "file:///nowhere.parquet", "sha256": "0" * 64, "rows": 400},
        spec=spec.to_dict(),
        spec_overrides={"guards.max_grad_norm": 500.0},
        model_name="diverging_model",
    )
    with pytest.raises(AirflowFailException, match=r"training diverged at step \d+ .*Nothing was registered"):
        op.execute(CONTEXT)
    assert seen["spec"].guards.max_grad_norm == 500.0

    from gd_provider.hooks.mlflow import MlflowHook

    client = MlflowHook().get_conn()
    exp = client.get_experiment_by_name("diverging_model")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["gd.health.status"] == "diverged"
    assert run.data.tags["gd.health.guard_tripped"] == "True"
    assert run.data.tags["gd.dag_id"] == "gd_test_dag"
    assert "model" not in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert client.search_registered_models() == []


def test_training_operator_rejects_bad_overrides_by_field(gd_home):
    op = RayTrainOperator(
        task_id="train",
        dataset={},
        spec=demo_training_spec().to_dict(),
        spec_overrides={"precision": "bf16", "device": "cpu"},
        model_name="m",
    )
    with pytest.raises(AirflowFailException, match="invalid training spec.*'precision'"):
        op.execute(CONTEXT)
    op.spec_overrides = "lr=0.1"
    with pytest.raises(AirflowFailException, match="spec_overrides"):
        op.execute(CONTEXT)
