"""The release decision at each model's operating point: the seed's incident replayed against the shipped
config, paired bootstrap intervals, slices, and the minimum holdout size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from gd_provider.core.gate import GatePolicy
from gd_provider.core.gates.release import decide_release
from gd_provider.core.tasks import get_task

BINARY = get_task("binary")
SHIPPED = yaml.safe_load((Path(__file__).resolve().parents[2] / "dags" / "configs" / "fraud_detector.yaml").read_text())


def _holdout(n=20000, rate=0.03, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rate).astype(float)
    z = rng.normal(size=n) + 2.4 * y
    return y, z, rng


def _proba(z):
    return 1 / (1 + np.exp(-(z - 2.0)))


def _threshold_for_fpr(y, p, fpr):
    return float(np.quantile(p[y == 0], 1 - fpr))


def test_the_incident_is_rejected_by_the_shipped_gate_naming_fpr_and_both_values():
    """Same ranking quality, but the challenger's serving threshold flags 25% more legitimate transactions."""
    y, z, rng = _holdout()
    champion = _proba(z)
    challenger = _proba(z + rng.normal(scale=0.05, size=len(z)))  # ROC/PR AUC within tolerance
    th_champion = _threshold_for_fpr(y, champion, 0.020)
    th_challenger = _threshold_for_fpr(y, challenger, 0.025)  # the moved boundary: +25% FPR
    policy = GatePolicy.from_dict(SHIPPED["gate"], task=BINARY)
    decision = decide_release(BINARY, policy, y, challenger, champion, challenger_threshold=th_challenger,
                              champion_threshold=th_champion, champion_version="7")
    assert not decision.blessed
    c, h = decision.champion_metrics, decision.challenger_metrics
    assert abs(h["roc_auc"] - c["roc_auc"]) < 0.01 and c["pr_auc"] - h["pr_auc"] < 0.02
    assert h["fpr"] / c["fpr"] == pytest.approx(1.25, abs=0.02)
    failed = [r for r in decision.reasons if r.endswith("FAIL")]
    assert len(failed) == 1 and failed[0].startswith("fpr ")
    assert f"{h['fpr']:.4f}" in failed[0] and f"{c['fpr']:.4f}" in failed[0] and "v7" in failed[0]
    # the same challenger at the champion's false-positive rate is blessed: the gate judges the decision
    same = decide_release(BINARY, policy, y, challenger, champion, champion_version="7",
                          challenger_threshold=_threshold_for_fpr(y, challenger, 0.020), champion_threshold=th_champion)
    assert same.blessed, same.reasons


def test_a_flip_rate_above_the_bound_is_rejected():
    y, z, rng = _holdout()
    champion = _proba(z)
    bound = SHIPPED["gate"]["value_thresholds"]["flip_rate"]
    # a different model at the same false-positive rate: many decisions change hands
    challenger = _proba(z + rng.normal(scale=1.0, size=len(z)))
    th_c, th_h = _threshold_for_fpr(y, champion, 0.02), _threshold_for_fpr(y, challenger, 0.02)
    policy = GatePolicy.from_dict({"value_thresholds": {"flip_rate": bound}}, task=BINARY)
    decision = decide_release(BINARY, policy, y, challenger, champion, challenger_threshold=th_h,
                              champion_threshold=th_c, champion_version="3")
    assert decision.challenger_metrics["flip_rate"] > bound
    assert not decision.blessed and any(r.startswith("flip_rate") and r.endswith("FAIL") for r in decision.reasons)
    stable = decide_release(BINARY, policy, y, champion, champion, challenger_threshold=th_c, champion_threshold=th_c,
                            champion_version="3")
    assert stable.blessed and stable.challenger_metrics["flip_rate"] == 0.0


WORST = {"max_rel_regression": {"fpr": 0.10}, "max_abs_regression": {"recall": 0.05},
         "interval": {"confidence": 0.95, "resamples": 1000, "judge": "worst_end"}}


def test_models_differing_only_by_noise_are_never_rejected_on_the_interval_policy():
    policy = GatePolicy.from_dict(WORST, task=BINARY)
    for seed in range(10):
        y, z, rng = _holdout(n=200_000, seed=seed)
        champion = _proba(z + rng.normal(scale=0.02, size=len(z)))
        challenger = _proba(z + rng.normal(scale=0.02, size=len(z)))
        th = 0.5
        decision = decide_release(BINARY, policy, y, challenger, champion, challenger_threshold=th,
                                  champion_threshold=th, champion_version="1")
        assert decision.blessed, (seed, decision.reasons)
        assert decision.intervals["judge"] == "worst_end" and "change" in decision.intervals


def test_a_real_regression_of_the_declared_size_is_rejected_on_the_interval_policy():
    policy = GatePolicy.from_dict(WORST, task=BINARY)
    for seed in range(5):
        y, z, _ = _holdout(n=200_000, seed=seed)
        p = _proba(z)
        th_c = _threshold_for_fpr(y, p, 0.02)
        th_h = _threshold_for_fpr(y, p, 0.022)  # exactly the declared +10% FPR
        decision = decide_release(BINARY, policy, y, p, p, challenger_threshold=th_h, champion_threshold=th_c,
                                  champion_version="1")
        assert not decision.blessed, (seed, decision.reasons)
        assert any("fpr" in r and "worse end" in r and r.endswith("FAIL") for r in decision.reasons)
        point = decide_release(BINARY, GatePolicy.from_dict({**WORST, "interval": {**WORST["interval"],
                                                             "judge": "point"}}, task=BINARY),
                               y, p, p, challenger_threshold=th_h, champion_threshold=th_c, champion_version="1")
        assert point.intervals["judge"] == "point"


def test_the_gate_refuses_to_decide_on_a_small_holdout():
    y, z, _ = _holdout(n=3000)
    policy = GatePolicy.from_dict({"value_thresholds": {"roc_auc": 0.5}, "min_holdout_rows": 5000,
                                   "min_class_rows": 200}, task=BINARY)
    decision = decide_release(BINARY, policy, y, _proba(z), None)
    assert not decision.blessed
    assert decision.reasons[0] == "the gate refuses to decide: the holdout has 3000 rows, fewer than min_holdout_rows=5000"
    assert "label classes under min_class_rows=200" in decision.reasons[1] and "'1':" in decision.reasons[1]


SLICES = {"max_abs_regression": {"pr_auc": 0.05},
          "slices": {"columns": ["channel"], "min_rows": 500, "max_abs_regression": {"recall": 0.05}}}


def test_a_challenger_better_overall_but_worse_on_one_slice_is_rejected_naming_it():
    y, z, rng = _holdout(n=60000)
    channel = rng.choice(["pos", "online", "atm"], size=len(y), p=[0.6, 0.35, 0.05])
    channel[:300] = "kiosk"  # a slice under min_rows: reported, not judged
    holdout = pd.DataFrame({"channel": channel})
    champion = _proba(z)
    better = z + 0.4 * y  # better everywhere ...
    better[(channel == "online") & (y == 1)] -= 1.5  # ... except online fraud, which it now misses
    challenger = _proba(better)
    th = _threshold_for_fpr(y, champion, 0.02)
    policy = GatePolicy.from_dict(SLICES, task=BINARY)
    decision = decide_release(BINARY, policy, y, challenger, champion, challenger_threshold=th, champion_threshold=th,
                              champion_version="2", holdout=holdout)
    assert decision.challenger_metrics["pr_auc"] > decision.champion_metrics["pr_auc"] - 0.05
    assert not decision.blessed
    assert decision.slices["failed"] == ["channel=online"]
    assert any(r.startswith("slice channel=online") and "recall" in r for r in decision.reasons)
    assert decision.slices["unjudged"] == {"channel=kiosk": 300}
    assert any("channel=kiosk (300 rows)" in r and "not judged" in r for r in decision.reasons)


def test_slice_and_interval_policies_are_checked_when_parsed():
    from gd_provider.core.gate import GateConfigError

    with pytest.raises(GateConfigError, match="slices.columns"):
        GatePolicy.from_dict({"value_thresholds": {"roc_auc": 0.5}, "slices": {"columns": []}}, task=BINARY)
    with pytest.raises(GateConfigError, match="slices.max_gap: metric 'auc'"):
        GatePolicy.from_dict({"value_thresholds": {"roc_auc": 0.5},
                              "slices": {"columns": ["c"], "max_gap": {"auc": 0.1}}}, task=BINARY)
    with pytest.raises(GateConfigError, match="interval.judge"):
        GatePolicy.from_dict({"value_thresholds": {"roc_auc": 0.5}, "interval": {"judge": "best"}}, task=BINARY)
    # every task gets intervals and slices; a slice bound names one of the task's own metrics
    GatePolicy.from_dict({"value_thresholds": {"r2": 0.5}, "interval": {"judge": "point"},
                          "slices": {"columns": ["c"], "worst_slice_floor": {"r2": 0.1}}}, task=get_task("regression"))
    with pytest.raises(GateConfigError, match=r"slices.max_gap: metric 'fpr' is not a slice metric; slice metrics "
                                              r"are \['abs_error_p50'"):
        GatePolicy.from_dict({"value_thresholds": {"r2": 0.5}, "slices": {"columns": ["c"], "max_gap": {"fpr": 0.1}}},
                             task=get_task("regression"))


def test_the_smoke_test_compares_live_decisions_with_what_the_gate_measured():
    y, z, _ = _holdout(n=5000)
    p = _proba(z)
    th = _threshold_for_fpr(y, p, 0.02)
    rate = float(np.mean(p >= th))
    options = {"positive_rate_bounds": (0.0, 0.5), "max_positive_rate_change": 0.01}
    assert BINARY.smoke_problems(p, None, {**options, "expected_positive_rate": rate}, th) == []
    # served at the fixed 0.5 instead of its operating point: far more flags than the gate blessed
    problems = BINARY.smoke_problems(p, None, {**options, "expected_positive_rate": rate}, 0.5 * th)
    assert len(problems) == 1 and f"vs {rate:.4f} the evaluation gate measured on the holdout" in problems[0]
    # the previous champion is not the reference once the gate's expectation is known
    assert BINARY.smoke_problems(p, p * 0.1, {**options, "expected_positive_rate": rate}, th) == []
