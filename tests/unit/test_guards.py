"""Guards, collective decisions, lr schedules, spec validation, sensitivity and health gate logic (no Ray)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gd_provider.core.training.guards import (
    GuardConfig,
    StepVerdict,
    TrainingGuard,
    TripCode,
    check_validation,
    combine_decisions,
    decide_collectively,
    describe,
    pack_decision,
    unpack_decision,
)
from gd_provider.core.training.health import HealthThresholds, assess_health, health_summary
from gd_provider.core.training.schedule import lr_at
from gd_provider.core.training.sensitivity import judge_sensitivity, sensitivity_spread
from gd_provider.core.training.spec import SpecError, TrainingSpec
from gd_provider.demo.schema import training_spec as demo_training_spec


def healthy_sequence(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A noisy but healthy run: loss decays from 0.7 to ~0.2, grad norm decays 1.0 -> 0.2 with noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    loss = 0.2 + 0.5 * np.exp(-t / 80) + rng.normal(0, 0.03, n)
    norm = (0.2 + 0.8 * np.exp(-t / 100)) * rng.lognormal(0, 0.3, n)
    return loss, norm


def first_trip(guard: TrainingGuard, loss, norm):
    return guard.check(np.asarray(loss, dtype=float), np.asarray(norm, dtype=float))


# ---------------------------------------------------------------------------------------------- guards
def test_healthy_sequence_never_trips():
    for seed in range(5):
        loss, norm = healthy_sequence(seed=seed)
        assert first_trip(TrainingGuard(GuardConfig()), loss, norm) is None


@pytest.mark.parametrize(
    ("bad_loss", "bad_norm", "code"),
    [
        (math.nan, 0.5, TripCode.NONFINITE_LOSS),
        (math.inf, 0.5, TripCode.NONFINITE_LOSS),
        (0.4, math.nan, TripCode.NONFINITE_GRAD),
        (0.4, -math.inf, TripCode.NONFINITE_GRAD),
        (math.nan, math.nan, TripCode.NONFINITE_LOSS),
    ],
)
def test_nonfinite_trips_at_the_exact_step(bad_loss, bad_norm, code):
    loss, norm = healthy_sequence(100)
    loss[37], norm[37] = bad_loss, bad_norm
    index, verdict = first_trip(TrainingGuard(GuardConfig()), loss, norm)
    assert (index, verdict.code) == (37, code)


def test_nonfinite_trips_even_on_the_first_step():
    index, verdict = first_trip(TrainingGuard(GuardConfig()), [math.nan], [1.0])
    assert (index, verdict.code) == (0, TripCode.NONFINITE_LOSS)


def test_absolute_explosion():
    loss, norm = healthy_sequence(50)
    norm[3] = 2e4  # before any history: only the absolute bound can catch it
    index, verdict = first_trip(TrainingGuard(GuardConfig(max_grad_norm=1e4)), loss, norm)
    assert (index, verdict.code, verdict.value, verdict.threshold) == (3, TripCode.GRAD_EXPLOSION, 2e4, 1e4)
    assert (
        first_trip(TrainingGuard(GuardConfig(max_grad_norm=None, explosion_factor=None)), loss, norm) is None
    )


def test_relative_explosion_against_running_median():
    loss = np.full(80, 0.5)
    norm = np.full(80, 2.0)
    norm[60] = 2.0 * 50 + 1  # just above 50 x median
    one_step = GuardConfig(explosion_factor=50.0, max_grad_norm=None, breach_steps=1)
    index, verdict = first_trip(TrainingGuard(one_step), loss, norm)
    assert (index, verdict.code) == (60, TripCode.GRAD_EXPLOSION_RELATIVE)
    assert verdict.threshold == pytest.approx(100.0)
    norm[60] = 99.0  # just below: no trip
    assert first_trip(TrainingGuard(one_step), loss, norm) is None


def test_relative_explosion_needs_consecutive_breaches():
    """One outlying norm (a minibatch with several heavily weighted rows) is noise; three in a row trip."""
    loss = np.full(80, 0.5)
    norm = np.full(80, 2.0)
    norm[60] = norm[62] = 500.0
    cfg = GuardConfig(explosion_factor=50.0, max_grad_norm=None)  # breach_steps=3 by default
    assert cfg.breach_steps == 3
    assert first_trip(TrainingGuard(cfg), loss, norm) is None
    norm[61] = 400.0  # 60, 61, 62 in a row: the held-out breaches do not raise the median
    index, verdict = first_trip(TrainingGuard(cfg), loss, norm)
    assert (index, verdict.code, verdict.value) == (62, TripCode.GRAD_EXPLOSION_RELATIVE, 500.0)
    assert verdict.threshold == pytest.approx(100.0)


def test_relative_explosion_needs_history():
    guard = TrainingGuard(GuardConfig(explosion_factor=10.0, max_grad_norm=None, min_history=10))
    # 1 -> 1000 at step 5: fewer than min_history norms seen, so no relative trip yet
    assert first_trip(guard, [0.5] * 6, [1, 1, 1, 1, 1, 1000]) is None


def test_growing_norms_do_not_trip_relative_rule():
    # a norm that doubles every 20 steps stays within 50 x its running median
    n = 200
    norm = 0.1 * 2 ** (np.arange(n) / 20)
    assert first_trip(TrainingGuard(GuardConfig(max_grad_norm=None)), np.full(n, 0.5), norm) is None


def test_vanishing_needs_n_consecutive_small_norms():
    cfg = GuardConfig(vanishing_eps=1e-8, vanishing_steps=5)
    loss = np.full(30, 0.69)
    norm = np.ones(30)
    norm[10:14] = 0.0  # 4 in a row, then recovers
    assert first_trip(TrainingGuard(cfg), loss, norm) is None
    norm[20:25] = 1e-9  # 5 in a row
    index, verdict = first_trip(TrainingGuard(cfg), loss, norm)
    assert (index, verdict.code) == (24, TripCode.VANISHING_GRADIENT)
    assert first_trip(TrainingGuard(GuardConfig(vanishing_eps=None)), loss, norm) is None


def test_dead_gradient_is_vanishing_not_a_relative_explosion():
    # a running median of 0 must not make any positive norm an "explosion" (50 x 0 = 0)
    cfg = GuardConfig(vanishing_eps=1e-8, vanishing_steps=13)
    norms = [0.0] * 12 + [1e-9]
    index, verdict = first_trip(TrainingGuard(cfg), [0.69] * 13, norms)
    assert (index, verdict.code) == (12, TripCode.VANISHING_GRADIENT)
    # below the floor but not vanishing long enough yet: no trip at all
    assert first_trip(TrainingGuard(GuardConfig(vanishing_steps=20)), [0.69] * 13, norms) is None
    # without the vanishing rule the floor is tiny (1e-12), and a median of 0 still says nothing
    no_vanish = GuardConfig(vanishing_eps=None, max_grad_norm=None)
    assert first_trip(TrainingGuard(no_vanish), [0.69] * 13, norms) is None
    # a healthy (above-floor) small median still gets the relative rule
    index, verdict = first_trip(TrainingGuard(no_vanish), [0.69] * 15, [1e-6] * 12 + [1e-3] * 3)
    assert (index, verdict.code) == (14, TripCode.GRAD_EXPLOSION_RELATIVE)
    assert verdict.threshold == pytest.approx(50 * 1e-6)


def test_loss_spike_against_the_top_of_the_running_window():
    cfg = GuardConfig(spike_window=20, spike_rtol=2.0, spike_atol=0.1, breach_steps=1)
    loss = np.full(60, 0.3)
    norm = np.full(60, 0.5)
    loss[40] = 0.3 * 3 + 0.01  # top 0.3, needs > 0.3 + max(2 x 0.3, 0.1) = 0.9
    index, verdict = first_trip(TrainingGuard(cfg), loss, norm)
    assert (index, verdict.code) == (40, TripCode.LOSS_SPIKE)
    assert verdict.threshold == pytest.approx(0.9)
    loss[40] = 0.89
    assert first_trip(TrainingGuard(cfg), loss, norm) is None
    # the band is the window's TOP: one earlier noisy batch at 0.5 widens it to 0.5 + 2 x 0.5 = 1.5
    loss[40], loss[30] = 1.4, 0.5
    assert first_trip(TrainingGuard(cfg), loss, norm) is None


def test_loss_spike_respects_atol_for_tiny_losses():
    cfg = GuardConfig(spike_window=10, spike_rtol=2.0, spike_atol=0.1, breach_steps=1)
    loss = np.full(30, 0.001)
    loss[20] = 0.05  # 50x the top but only +0.049 absolute
    assert first_trip(TrainingGuard(cfg), loss, np.full(30, 0.5)) is None
    loss[20] = 0.2
    assert first_trip(TrainingGuard(cfg), loss, np.full(30, 0.5))[1].code == TripCode.LOSS_SPIKE


def test_loss_spike_zscore_condition():
    rng = np.random.default_rng(1)
    loss = 1.0 + rng.normal(0, 0.5, 60)  # very noisy losses
    loss = np.abs(loss)
    loss[50] = 6.0
    plain = GuardConfig(spike_window=20, spike_rtol=1.0, spike_atol=0.0, breach_steps=1)
    strict = GuardConfig(spike_window=20, spike_rtol=1.0, spike_atol=0.0, spike_zscore=20.0, breach_steps=1)
    assert first_trip(TrainingGuard(plain), loss, np.full(60, 0.5)) is not None
    assert first_trip(TrainingGuard(strict), loss, np.full(60, 0.5)) is None


def test_loss_spike_needs_consecutive_breaches_and_noise_breaches_rejoin():
    cfg = GuardConfig(spike_window=20)
    assert first_trip(TrainingGuard(cfg), [0.3] * 10 + [5.0], [0.5] * 11) is None  # one batch is noise
    assert first_trip(TrainingGuard(cfg), [0.3] * 10 + [5.0, 5.0, 0.3, 5.0], [0.5] * 14) is None
    index, verdict = first_trip(TrainingGuard(cfg), [0.3] * 10 + [5.0, 6.0, 7.0], [0.5] * 13)
    assert (index, verdict.code, verdict.value) == (12, TripCode.LOSS_SPIKE, 7.0)
    assert verdict.threshold == pytest.approx(0.9)  # the breaches were held out of the window
    # a breach streak that ends without a trip was noise: its losses join the window and widen the band
    guard = TrainingGuard(cfg)
    first_trip(guard, [0.3] * 10 + [5.0, 0.3], [0.5] * 12)
    assert max(guard.loss_window()) == 5.0 and guard.loss_band() == pytest.approx(15.0)


def test_the_first_loss_is_the_first_reference():
    """A run that blows up from its first update on (lr 10+) has no calm past but its initial loss."""
    index, verdict = first_trip(TrainingGuard(GuardConfig()), [1.4, 300.0, 2e3, 5e4], [0.5, 80.0, 90.0, 95.0])
    assert (index, verdict.code) == (3, TripCode.LOSS_SPIKE)
    assert verdict.threshold == pytest.approx(1.4 * 3)


def test_statistical_rules_off_for_single_sample_sgd():
    loss = np.full(60, 0.3)
    norm = np.full(60, 0.5)
    loss[40], norm[45] = 5.0, 100.0
    guard = TrainingGuard(GuardConfig(max_grad_norm=1e3), statistical_rules=False)
    assert first_trip(guard, loss, norm) is None
    norm[50] = 1e4  # the absolute bound still applies
    guard = TrainingGuard(GuardConfig(max_grad_norm=1e3), statistical_rules=False)
    assert first_trip(guard, loss, norm)[1].code == TripCode.GRAD_EXPLOSION


def test_guard_state_carries_over_check_windows():
    """Checking in chunks of k steps gives the same result as one long check (state persists)."""
    loss, norm = healthy_sequence(120)
    norm[100:] = 0.0
    cfg = GuardConfig(vanishing_steps=15)
    whole = first_trip(TrainingGuard(cfg), loss, norm)
    guard = TrainingGuard(cfg)
    chunked = None
    for start in range(0, 120, 7):
        hit = guard.check(loss[start : start + 7], norm[start : start + 7])
        if hit:
            chunked = (start + hit[0], hit[1])
            break
    assert whole == chunked and whole[0] == 114


def test_prime_restores_windows_without_tripping():
    cfg = GuardConfig(spike_window=5, explosion_factor=10.0, min_history=3, median_window=5, breach_steps=1)
    guard = TrainingGuard(cfg)
    guard.prime([0.3] * 5 + [math.nan], [1.0] * 5 + [math.inf])
    assert guard.running_median() == 1.0 and guard.running_loss_mean() == pytest.approx(0.3)
    assert guard.observe(0.3, 50.0).code == TripCode.GRAD_EXPLOSION_RELATIVE


def test_validation_rule_and_descriptions():
    assert check_validation(0.4).code == TripCode.OK
    assert check_validation(math.nan).code == TripCode.NONFINITE_VAL_LOSS
    cfg = GuardConfig()
    for code in TripCode:
        text = describe(code, 123.0, 10.0, cfg)
        assert text and isinstance(text, str)
    assert "max_grad_norm" in describe(TripCode.GRAD_EXPLOSION, 2e4, 1e4, cfg)
    assert "50 x running median" in describe(TripCode.GRAD_EXPLOSION_RELATIVE, 2e4, 1e2, cfg)


def test_guard_config_problems_name_the_field():
    assert GuardConfig().problem() is None
    assert GuardConfig(max_grad_norm=-1).problem()[0] == "max_grad_norm"
    assert GuardConfig(explosion_factor=1.0).problem()[0] == "explosion_factor"
    assert GuardConfig(vanishing_steps=0).problem()[0] == "vanishing_steps"
    assert GuardConfig(min_history=60, median_window=50).problem()[0] == "min_history"
    assert GuardConfig(spike_atol=-0.1).problem()[0] == "spike_atol"
    assert GuardConfig(enabled="yes").problem()[0] == "enabled"
    assert GuardConfig(breach_steps=0).problem()[0] == "breach_steps"


# ---------------------------------------------------------------------------------------------- collective
def test_pack_round_trip_and_ordering():
    assert unpack_decision(pack_decision(0, 5, 1)) == (0, -1, -1)
    assert unpack_decision(pack_decision(4, 123456, 3)) == (4, 123456, 3)
    assert pack_decision(7, 2**40 - 1, 0) < 2**63  # fits an int64
    # severity first, then the earliest step, then the lowest rank
    assert combine_decisions([pack_decision(2, 10, 0), pack_decision(6, 50, 1)]) == (6, 50, 1)
    assert combine_decisions([pack_decision(3, 40, 0), pack_decision(3, 12, 1)]) == (3, 12, 1)
    assert combine_decisions([pack_decision(3, 12, 1), pack_decision(3, 12, 0)]) == (3, 12, 0)
    assert combine_decisions([0, 0, 0]) == (0, -1, -1)
    with pytest.raises(ValueError):
        pack_decision(200, 1, 0)


def _simulate(locals_by_rank, first_step=101):
    """Run decide_collectively for every rank against simulated MAX / SUM all-reduces.

    Pass 1 gathers what every rank feeds the MAX all-reduce. Pass 2 hands every rank the reduced MAX and
    records what it feeds the SUM all-reduce. Pass 3 answers each SUM with the element-wise column sums
    of what all ranks sent in pass 2, so the code's own choice of contribution is what gets checked.
    """
    packed = []
    for rank, local in enumerate(locals_by_rank):
        decide_collectively(
            local,
            rank=rank,
            first_step=first_step,
            reduce_max=lambda v, packed=packed: packed.append(v) or v,
            share_floats=lambda vals: vals,
        )
    reduced = max(packed)
    sent = []
    for rank, local in enumerate(locals_by_rank):
        decide_collectively(
            local,
            rank=rank,
            first_step=first_step,
            reduce_max=lambda _v: reduced,
            share_floats=lambda vals: sent.append(list(vals)) or list(vals),
        )
    if not reduced:
        assert sent == []  # nobody tripped: the SUM all-reduce must not run on any rank
        summed = None
    else:
        assert len(sent) == len(locals_by_rank)  # every rank joins the SUM all-reduce exactly once
        summed = [sum(col) for col in zip(*sent, strict=True)]
    calls = []

    def share_sum(vals):
        calls.append(list(vals))
        assert summed is not None, "share_floats called although nobody tripped"
        return list(summed)

    decisions = [
        decide_collectively(
            local,
            rank=rank,
            first_step=first_step,
            reduce_max=lambda _v: reduced,
            share_floats=share_sum,
        )
        for rank, local in enumerate(locals_by_rank)
    ]
    assert calls == sent
    return decisions


def test_collective_decision_is_the_same_on_every_rank():
    spike = (7, StepVerdict(TripCode.LOSS_SPIKE, 3.0, 1.0))
    explosion = (12, StepVerdict(TripCode.GRAD_EXPLOSION, 2e4, 1e4))
    decisions = _simulate([spike, None, explosion])
    assert decisions[0] == decisions[1] == decisions[2]
    assert decisions[0] == (int(TripCode.GRAD_EXPLOSION), 101 + 12, 2, 2e4, 1e4)
    assert all(d[:3] == (0, -1, -1) for d in _simulate([None, None]))


def test_one_rank_tripping_stops_everyone():
    decisions = _simulate([None, (0, StepVerdict(TripCode.NONFINITE_LOSS, math.nan, math.nan))])
    assert all(d[0] == TripCode.NONFINITE_LOSS and d[1] == 101 and d[2] == 1 for d in decisions)
    # the non-tripping rank learns the winner's value / threshold through the SUM all-reduce
    assert all(math.isnan(d[3]) and math.isnan(d[4]) for d in decisions)
    decisions = _simulate([None, (4, StepVerdict(TripCode.GRAD_EXPLOSION, 3e4, 1e4)), None])
    assert all(d == (int(TripCode.GRAD_EXPLOSION), 105, 1, 3e4, 1e4) for d in decisions)


# ---------------------------------------------------------------------------------------------- schedules
def test_constant_and_warmup():
    assert [lr_at(s, base_lr=0.1) for s in range(3)] == [0.1, 0.1, 0.1]
    warm = [lr_at(s, base_lr=0.1, warmup_steps=4) for s in range(6)]
    assert warm == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])


def test_step_schedule():
    lrs = [lr_at(s, base_lr=1.0, schedule="step", step_size=3, gamma=0.5) for s in range(8)]
    assert lrs == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]
    # after warm-up the step schedule starts counting at 0
    lrs = [lr_at(s, base_lr=1.0, schedule="step", step_size=2, gamma=0.1, warmup_steps=2) for s in range(6)]
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 1.0, 0.1, 0.1])


def test_cosine_schedule():
    total = 10
    lrs = [lr_at(s, base_lr=2.0, schedule="cosine", total_steps=total) for s in range(total + 3)]
    assert lrs[0] == 2.0 and lrs[5] == pytest.approx(1.0) and 0 < lrs[9] < 0.1
    assert lrs[10] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)  # clamps after the horizon
    warm = [lr_at(s, base_lr=1.0, schedule="cosine", total_steps=12, warmup_steps=2) for s in range(12)]
    assert warm[:3] == pytest.approx([0.5, 1.0, 1.0]) and warm[7] == pytest.approx(0.5)


def test_unknown_schedule_raises():
    with pytest.raises(ValueError, match="unknown lr schedule"):
        lr_at(0, base_lr=0.1, schedule="exp")


# ---------------------------------------------------------------------------------------------- spec
NEW_BAD_VALUES = [
    ("loss", "mse"),
    ("batch_mode", "stochastic"),
    ("lr_schedule", "onecycle"),
    ("lr_step_size", 0),
    ("lr_gamma", 0.0),
    ("lr_gamma", 1.5),
    ("warmup_steps", -1),
    ("early_stopping_metric", "accuracy"),
    ("early_stopping_min_delta", -0.1),
    ("sync_every_k_steps", 0),
    ("deterministic", "yes"),
    ("device", "tpu"),
    ("precision", "fp16"),
    ("max_failures", -1),
    ("guards.max_grad_norm", 0),
    ("guards.vanishing_steps", 0),
    ("guards.explosion_factor", 0.5),
    ("guards.spike_window", 2.5),
    ("guards.breach_steps", 0),
    ("sensitivity.factors", [1.0]),
    ("sensitivity.factors", [1.0, -2.0]),
    ("sensitivity.metric", "accuracy"),
    ("sensitivity.max_spread", 0),
    ("sensitivity.sample_rows", 5),
]


@pytest.mark.parametrize(("field", "value"), NEW_BAD_VALUES, ids=[f"{f}={v!r}" for f, v in NEW_BAD_VALUES])
def test_new_spec_fields_are_validated_naming_the_field(field, value):
    with pytest.raises(SpecError) as err:
        demo_training_spec().with_overrides({field: value})
    assert err.value.field == field
    assert repr(field) in str(err.value)


def test_bf16_on_cpu_is_rejected_not_downgraded():
    with pytest.raises(SpecError, match="bf16") as err:
        demo_training_spec(device="cpu", precision="bf16")
    assert err.value.field == "precision"
    demo_training_spec(device="cuda", precision="bf16")  # valid as a spec; resolved at run time


def test_nested_configs_round_trip_and_merge():
    spec = demo_training_spec(
        batch_mode="full",
        lr_schedule="cosine",
        warmup_steps=5,
        guards={"spike_rtol": 3.0},
        sensitivity={"enabled": True, "factors": [0.5, 1.0, 2.0, 4.0]},
    )
    assert spec.guards.spike_rtol == 3.0 and spec.guards.max_grad_norm == GuardConfig().max_grad_norm
    assert spec.sensitivity.factors == (0.5, 1.0, 2.0, 4.0)
    assert TrainingSpec.from_json(spec.to_json()) == spec
    again = spec.with_overrides({"guards.max_grad_norm": 50.0})
    assert again.guards.spike_rtol == 3.0 and again.guards.max_grad_norm == 50.0
    assert spec.with_overrides(guards={"enabled": False}).guards.spike_rtol == 3.0


def test_unknown_nested_keys_are_rejected_by_name():
    data = demo_training_spec().to_dict()
    data["guards"]["spike_threshold"] = 3
    with pytest.raises(SpecError) as err:
        TrainingSpec.from_dict(data)
    assert err.value.field == "guards.spike_threshold"
    with pytest.raises(SpecError) as err:
        demo_training_spec().with_overrides({"sensitivity.fraction": 0.1})
    assert err.value.field == "sensitivity.fraction"
    with pytest.raises(SpecError) as err:
        demo_training_spec().with_overrides({"optimizer.beta": 0.1})
    assert err.value.field == "optimizer.beta"


def test_batch_rows_per_mode():
    spec = demo_training_spec(batch_size=64)
    assert spec.batch_rows(1000) == 64 and spec.batch_rows(10) == 10
    assert spec.with_overrides(batch_mode="full").batch_rows(1000) == 1000
    assert spec.with_overrides(batch_mode="sgd").batch_rows(1000) == 1


def test_old_specs_without_the_new_fields_still_load():
    data = demo_training_spec().to_dict()
    for key in ("guards", "sensitivity", "batch_mode", "lr_schedule", "device", "precision"):
        del data[key]
    spec = TrainingSpec.from_dict(data)
    assert spec.batch_mode == "minibatch" and spec.guards == GuardConfig()


# ---------------------------------------------------------------------------------------------- sensitivity
def test_sensitivity_spread():
    assert sensitivity_spread([0.90, 0.93, 0.88]) == pytest.approx(0.05)
    assert math.isnan(sensitivity_spread([0.9, math.nan]))
    assert math.isnan(sensitivity_spread([0.9]))
    ok, spread, reason = judge_sensitivity([0.5, 1, 2], [0.90, 0.91, 0.92], 0.05, "val_roc_auc")
    assert ok and spread == pytest.approx(0.02) and "0.9100" in reason
    ok, spread, reason = judge_sensitivity([0.5, 1, 2], [0.90, 0.91, 0.70], 0.05, "val_roc_auc")
    assert (
        not ok and spread == pytest.approx(0.21) and "lr x 2: 0.7000" in reason and "> max_spread" in reason
    )
    ok, _, reason = judge_sensitivity([0.5, 1, 2], [0.9, math.nan, 0.9], 0.05)
    assert not ok and "[1]" in reason


# ---------------------------------------------------------------------------------------------- health
def _steps(n=100, clipped=0, nonfinite=0):
    return {
        "step": list(range(1, n + 1)),
        "loss": [0.5] * n,
        "grad_norm": [0.8] * n,
        "lr": [0.01] * n,
        "clipped": [1] * clipped + [0] * (n - clipped),
        "nonfinite": [1] * nonfinite + [0] * (n - nonfinite),
    }


def test_health_summary_is_flat_and_complete():
    spec = demo_training_spec()
    trip = {
        "code": 4,
        "kind": "grad_explosion",
        "reason": "boom",
        "step": 7,
        "epoch": 1,
        "batch": 6,
        "rank": 1,
    }
    sens = {
        "status": "failed",
        "metric": "val_roc_auc",
        "spread": 0.2,
        "max_spread": 0.05,
        "factors": [0.5, 1.0, 2.0],
        "values": [0.9, 0.91, 0.71],
    }
    health = health_summary(_steps(10, clipped=4), status="diverged", spec=spec, trip=trip, sensitivity=sens)
    assert health["clipped_share"] == 0.4 and health["guard_kind"] == "grad_explosion"
    assert health["guard_step"] == 7 and health["sensitivity_values"] == "0.5:0.9000,1:0.9100,2:0.7100"
    assert all(not isinstance(v, dict | list) for v in health.values())


def test_assess_health_passes_a_healthy_run():
    health = health_summary(_steps(100, clipped=10), status="completed")
    ok, reasons = assess_health(health, None)
    assert ok and all(r.startswith(("PASS", "NOTE")) for r in reasons)
    assert "NOTE learning-rate sensitivity check not run (training.sensitivity.enabled is false)" in reasons


def test_a_required_sensitivity_check_that_did_not_run_fails_the_gate():
    health = health_summary(_steps(100, clipped=10), status="completed")  # no sensitivity result: skipped
    ok, reasons = assess_health(health, {"require_sensitivity_pass": True})
    assert not ok and any(r.startswith("FAIL") and "required" in r and "did not run" in r for r in reasons)
    assert assess_health(health, {"require_sensitivity_pass": False})[0]


@pytest.mark.parametrize(
    ("health_kwargs", "thresholds", "needle"),
    [
        ({"status": "diverged", "trip": {"reason": "gradient explosion", "step": 5}}, None, "diverged"),
        ({"status": "completed", "steps": _steps(100, clipped=60)}, {"max_clipped_share": 0.5}, "clipped"),
        ({"status": "completed", "steps": _steps(100, nonfinite=1)}, None, "non-finite"),
        (
            {"status": "completed", "sensitivity": {"status": "failed", "spread": 0.3, "max_spread": 0.05}},
            None,
            "sensitivity",
        ),
        ({"status": "completed", "restarts": 3}, {"max_restarts": 1}, "restarts"),
    ],
)
def test_assess_health_fails_each_breach(health_kwargs, thresholds, needle):
    kwargs = dict(health_kwargs)
    steps = kwargs.pop("steps", _steps(100))
    health = health_summary(steps, **kwargs)
    ok, reasons = assess_health(health, thresholds)
    failed = [r for r in reasons if r.startswith("FAIL")]
    assert not ok and len(failed) == 1 and needle in failed[0]


def test_assess_health_thresholds_can_relax_checks():
    health = health_summary(_steps(100, clipped=90), status="completed")
    assert not assess_health(health, {})[0]
    assert assess_health(health, {"max_clipped_share": None})[0]
    assert assess_health(health, HealthThresholds(max_clipped_share=0.95))[0]


@pytest.mark.parametrize("name", ["allow_diverged", "require_sensitivity_pass"])
@pytest.mark.parametrize("value", ["false", "true", "", 0, 1, None])
def test_boolean_health_thresholds_must_be_real_booleans(name, value):
    if value is None and name == "require_sensitivity_pass":
        assert HealthThresholds(require_sensitivity_pass=None).require_sensitivity_pass is None  # the default
        return
    with pytest.raises(ValueError, match=name):
        HealthThresholds.from_value({name: value})
    with pytest.raises(ValueError, match=name):
        HealthThresholds(**{name: value})


def test_a_diverged_run_is_not_passed_by_the_string_false():
    health = health_summary(_steps(100), status="diverged", trip={"reason": "gradient explosion", "step": 5})
    with pytest.raises(ValueError, match="allow_diverged"):
        assess_health(health, {"allow_diverged": "false"})
    assert not assess_health(health, {"allow_diverged": False})[0]
    assert assess_health(health, {"allow_diverged": True})[0]
    failed_sensitivity = health_summary(
        _steps(100), status="completed", sensitivity={"status": "failed", "spread": 0.3, "max_spread": 0.05}
    )
    with pytest.raises(ValueError, match="require_sensitivity_pass"):
        assess_health(failed_sensitivity, {"require_sensitivity_pass": "true"})
    assert assess_health(failed_sensitivity, {"require_sensitivity_pass": False})[0]


@pytest.mark.parametrize("value", ["0.5", True, -0.1, 1.5])
def test_max_clipped_share_must_be_a_fraction(value):
    with pytest.raises(ValueError, match="max_clipped_share"):
        HealthThresholds.from_value({"max_clipped_share": value})


def test_assess_health_fails_on_missing_information():
    assert assess_health(None, None) == (False, ["FAIL no health summary to assess"])
    ok, reasons = assess_health({"steps": 10}, None)
    assert not ok and any("lacks 'status'" in r for r in reasons)
    with pytest.raises(ValueError, match="unknown health threshold"):
        assess_health({"status": "completed"}, {"max_clip_share": 0.5})
