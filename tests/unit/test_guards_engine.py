"""The guarded training engine in-process (``fit_plain``, no Ray) on tiny separable data: batch modes,
schedules, guard trips with their step/epoch/batch, determinism, and the sensitivity check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gd_provider.core.training.guards import TripCode
from gd_provider.core.training.loop import (
    _save_checkpoint_files,
    best_epoch,
    checkpoint_for_epoch,
    fit_plain,
    latest_checkpoint_on_disk,
    read_progress,
    stop_early,
)
from gd_provider.core.training.schedule import lr_at
from gd_provider.core.training.sensitivity import run_sensitivity
from gd_provider.core.training.spec import TrainingSpec


def separable(n: int, seed: int = 0, dim: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype("float32")
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype("float32")
    return x, y


X, Y = separable(600)
XV, YV = separable(300, seed=1)
BASE = TrainingSpec(
    numeric_features=["a", "b", "c", "d"],
    categorical_features=[],
    label="y",
    timestamp_column="ts",
    model="logistic",
    hidden_sizes=[],
    optimizer="adam",
    lr=0.05,
    batch_size=32,
    epochs=3,
    seed=3,
)


def fit(spec, x=X, y=Y, **kwargs):
    return fit_plain(spec, x, y, XV, YV, pos_weight=1.0, **kwargs)


@pytest.mark.parametrize(
    ("mode", "overrides", "steps"),
    [
        ("minibatch", {}, 3 * math.ceil(600 / 32)),
        ("full", {"lr": 0.3, "epochs": 30}, 30),
        ("sgd", {"lr": 0.02, "epochs": 1}, 600),
    ],
)
def test_every_batch_mode_converges(mode, overrides, steps):
    result = fit(BASE.with_overrides(batch_mode=mode, **overrides))
    assert result.trip is None
    assert len(result.steps["step"]) == steps
    last = result.history[-1]
    assert last["val_roc_auc"] > 0.98 and last["val_loss"] < 0.35
    assert last["batch_rows"] == {"minibatch": 32, "full": 600, "sgd": 1}[mode]


def test_telemetry_per_step():
    spec = BASE.with_overrides(grad_clip_norm=0.05, lr_schedule="step", lr_step_size=10, lr_gamma=0.5)
    result = fit(spec)
    steps = result.steps
    n = len(steps["step"])
    assert steps["step"] == list(range(1, n + 1))
    assert set(steps) == {"step", "epoch", "loss", "grad_norm", "lr", "clipped", "nonfinite"}
    assert all(len(v) == n for v in steps.values())
    assert steps["lr"] == pytest.approx(
        [lr_at(i, base_lr=0.05, schedule="step", step_size=10, gamma=0.5) for i in range(n)]
    )
    assert steps["clipped"] == [int(g > 0.05) for g in steps["grad_norm"]]
    assert sum(steps["clipped"]) > 0 and sum(steps["nonfinite"]) == 0
    assert result.history[-1]["clipped_steps"] == sum(
        c for c, e in zip(steps["clipped"], steps["epoch"], strict=True) if e == 3
    )


def test_same_seed_same_run_and_sync_interval_does_not_change_results():
    a = fit(BASE.with_overrides(model="mlp", hidden_sizes=[8], dropout=0.1, sync_every_k_steps=1))
    b = fit(BASE.with_overrides(model="mlp", hidden_sizes=[8], dropout=0.1, sync_every_k_steps=50))
    assert a.steps == b.steps
    assert [h["val_loss"] for h in a.history] == [h["val_loss"] for h in b.history]


def test_unguarded_loop_trains_the_same_weights():
    guarded = fit(BASE)
    bare = fit(BASE, guarded=False, telemetry=False)
    assert bare.steps["step"] == []
    for p, q in zip(guarded.model.parameters(), bare.model.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    "schedule",
    [
        {"lr_schedule": "step", "lr_step_size": 7, "lr_gamma": 0.5},
        {"lr_schedule": "cosine", "warmup_steps": 5},
    ],
)
def test_bare_loop_follows_the_same_lr_schedule_across_epochs(schedule):
    """The unguarded benchmark baseline (no telemetry) must not restart the schedule every epoch."""
    spec = BASE.with_overrides(**schedule)
    guarded = fit(spec)
    bare = fit(spec, guarded=False, telemetry=False)
    per_epoch = math.ceil(600 / 32)
    expected_last_lrs = [guarded.steps["lr"][e * per_epoch - 1] for e in (1, 2, 3)]
    assert [h["lr"] for h in guarded.history] == pytest.approx(expected_last_lrs)
    assert [h["lr"] for h in bare.history] == pytest.approx(expected_last_lrs)
    assert [h["global_step"] for h in bare.history] == [per_epoch, 2 * per_epoch, 3 * per_epoch]
    assert [h["global_step"] for h in bare.history] == [h["global_step"] for h in guarded.history]
    for p, q in zip(guarded.model.parameters(), bare.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_explosion_stops_at_the_recorded_step():
    spec = BASE.with_overrides(
        model="mlp",
        hidden_sizes=[16],
        optimizer="sgd",
        lr=10.0,
        momentum=0.9,
        grad_clip_norm=None,
        sync_every_k_steps=4,
    )
    result = fit(spec, x=X * 30)
    trip = result.trip
    assert trip is not None
    assert trip.code in {
        TripCode.GRAD_EXPLOSION,
        TripCode.GRAD_EXPLOSION_RELATIVE,
        TripCode.NONFINITE_LOSS,
        TripCode.NONFINITE_GRAD,
        TripCode.LOSS_SPIKE,
    }
    steps = result.steps
    # telemetry runs to the check point (a multiple of k) at or after the tripping step
    assert steps["step"][-1] >= trip.step and steps["step"][-1] - trip.step < 4
    assert steps["step"][-1] % 4 == 0 or steps["step"][-1] == trip.step
    assert trip.epoch == steps["epoch"][trip.step - 1]
    assert trip.batch == trip.step - 1 - (trip.epoch - 1) * math.ceil(600 / 32)
    assert trip.reason and trip.rank == 0


DEAD = "tests.unit.user_models:dead_relu"  # a user's factory by import path: no gradient ever flows


def test_vanishing_gradient_on_a_dead_model():
    spec = BASE.with_overrides(guards={"vanishing_steps": 10}, sync_every_k_steps=5)
    result = fit(spec.with_overrides(model=DEAD))
    assert result.trip is not None and result.trip.code == TripCode.VANISHING_GRADIENT
    assert result.trip.step == 10 and result.steps["step"][-1] == 10
    assert "vanishing" in result.trip.reason


def test_guards_disabled_never_stop():
    spec = BASE.with_overrides(guards={"enabled": False, "vanishing_steps": 10}, epochs=1)
    result = fit(spec.with_overrides(model=DEAD))
    assert result.trip is None and len(result.steps["step"]) == math.ceil(600 / 32)


def test_nonfinite_validation_loss_stops_after_the_epoch():
    xv_bad = XV.copy()
    xv_bad[0, 0] = np.inf
    spec = BASE.with_overrides(epochs=3)
    result = fit_plain(spec, X, Y, xv_bad, YV, pos_weight=1.0)
    assert result.trip is not None and result.trip.code == TripCode.NONFINITE_VAL_LOSS
    assert result.trip.epoch == 1 and len(result.history) == 1


def test_early_stopping_on_a_validation_metric():
    history = [
        {"epoch": 1, "val_loss": 0.5, "val_roc_auc": 0.80},
        {"epoch": 2, "val_loss": 0.4, "val_roc_auc": 0.90},
        {"epoch": 3, "val_loss": 0.45, "val_roc_auc": 0.905},
        {"epoch": 4, "val_loss": 0.46, "val_roc_auc": 0.904},
    ]
    by_loss = BASE.with_overrides(early_stopping_patience=2)
    assert stop_early(history, by_loss) and best_epoch(history, by_loss)["epoch"] == 2
    by_auc = BASE.with_overrides(early_stopping_patience=2, early_stopping_metric="val_roc_auc")
    assert not stop_early(history, by_auc) and best_epoch(history, by_auc)["epoch"] == 3
    strict = by_auc.with_overrides(early_stopping_min_delta=0.01)
    assert stop_early(history, strict)


def test_sensitivity_check_passes_and_fails():
    spec = BASE.with_overrides(
        sensitivity={"enabled": True, "sample_rows": 400, "epochs": 4, "max_spread": 0.05}
    )
    out = run_sensitivity(spec, X, Y, XV, YV, pos_weight=1.0)
    assert out["status"] == "passed", out
    assert out["factors"] == [0.5, 1.0, 2.0] and len(out["values"]) == 3 and out["train_rows"] == 400
    assert out["spread"] == pytest.approx(max(out["values"]) - min(out["values"]))

    # SGD at lr x 10 000 on scaled-up inputs explodes; lr x 1 trains fine -> the check fails and says why
    wild = BASE.with_overrides(
        optimizer="sgd",
        lr=0.01,
        grad_clip_norm=None,
        model="mlp",
        hidden_sizes=[8],
        sensitivity={"enabled": True, "factors": [1.0, 10000.0], "sample_rows": 400, "epochs": 1},
    )
    out = run_sensitivity(wild, X * 10, Y, XV * 10, YV, pos_weight=1.0)
    assert out["status"] == "failed"
    assert "10000" in out["reason"] and out["diverged"]


def test_deterministic_flag_is_applied_and_restored():
    assert not torch.are_deterministic_algorithms_enabled()
    result = fit(BASE.with_overrides(deterministic=True, epochs=1))
    assert result.trip is None and not torch.are_deterministic_algorithms_enabled()


def _checkpoint(root, name, epochs, *, status="running", model=True):
    d = root / name
    d.mkdir()
    history = [{"epoch": e} for e in range(1, epochs + 1)]
    steps = {"step": list(range(1, 10 * epochs + 1))}
    module = nn.Linear(2, 1) if model else None
    opt = torch.optim.SGD(module.parameters(), lr=0.1) if model else None
    _save_checkpoint_files(
        d, history=history, steps=steps, run_state={"status": status}, model=module, optimizer=opt
    )
    return d


def test_checkpoint_scan_finds_the_most_advanced_complete_checkpoint(tmp_path):
    assert latest_checkpoint_on_disk(tmp_path / "missing") is None
    _checkpoint(tmp_path, "checkpoint_2025-01-01_00-00-01", 1)
    two = _checkpoint(tmp_path, "checkpoint_2025-01-01_00-00-02", 2)
    broken = _checkpoint(tmp_path, "checkpoint_2025-01-01_00-00-03", 3)
    (broken / "steps.json").write_text("{not json")  # a half-written checkpoint is skipped
    _checkpoint(tmp_path, "checkpoint_2025-01-01_00-00-04", 3, model=False)  # no weights: skipped
    (tmp_path / "gd_inputs").mkdir()
    assert latest_checkpoint_on_disk(tmp_path) == two
    assert read_progress(two) == (2, 20, "running")
    assert checkpoint_for_epoch(tmp_path, 1).name.endswith("01") and checkpoint_for_epoch(tmp_path, 3) is None
    diverged = _checkpoint(tmp_path, "checkpoint_2025-01-01_00-00-05", 2, status="diverged", model=False)
    assert latest_checkpoint_on_disk(tmp_path) == diverged  # the abort checkpoint (no weights) counts
    assert checkpoint_for_epoch(tmp_path, 2) == two  # ... but never as the model of an epoch
